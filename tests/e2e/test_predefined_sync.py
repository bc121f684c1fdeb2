"""`inboxpilot predefined sync` and `validate`'s predefined check, against the simulator's seed
(Greeting, Out of hours, Follow-up). The audit log shows what the sync really changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from worker.cli import app
from worker.simulator.testing import SimulatorHandle

ROOT = Path(__file__).resolve().parents[2]
RULE = """
rules:
  - id: greet
    when: {status: open}
    then:
      - reply: {predefined: "Greeting"}
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """A rules folder with the shipped predefined/ folder and its PDF, plus one rule."""
    folder = tmp_path / "rules"
    shutil.copytree(ROOT / "rules" / "predefined", folder / "predefined")
    shutil.copytree(ROOT / "rules" / "files", folder / "files")
    (folder / "rules.yaml").write_text(RULE)
    return folder


def _cli(simulator: SimulatorHandle, rules: Path, *args: str) -> tuple[int, str]:
    env = {
        "INBOXPILOT_API_URL": simulator.url,
        "INBOXPILOT_API_TOKEN": simulator.token,
        "INBOXPILOT_RULES_PATH": str(rules),
        "INBOXPILOT_REDIS_URL": "",
    }
    result = CliRunner().invoke(app, list(args), env=env)
    assert simulator.token not in result.output
    return result.exit_code, result.output


def _mutations(simulator: SimulatorHandle) -> list[str]:
    return [
        f"{e.method} {e.path}"
        for e in simulator.sim.audit_log()
        if e.method in ("POST", "PATCH", "DELETE", "PUT")
    ]


def test_dry_run_shows_the_diff_against_the_sandbox_and_changes_nothing(
    simulator: SimulatorHandle, rules_dir: Path
) -> None:
    simulator.sim.seed(5, seed=1)
    (rules_dir / "predefined" / "hours-and-follow-up.yaml").write_text(
        '- title: Out of hours\n  text: "We\'re closed now and will answer first thing tomorrow."\n'
        "- title: Follow-up\n  text: Anything else we can do for you?\n"
    )
    simulator.sim.predefined_message("Old promo", "20% off this week")
    code, out = _cli(simulator, rules_dir, "predefined", "sync", "--dry-run")
    assert code == 0, out
    lines = out.splitlines()
    assert "+ create 'Price list'" in lines
    assert "    + Hi {{ contact.first_name }}, here is our current price list." in lines
    assert "    attachment: (none) -> files/price-list.pdf" in lines
    assert "~ patch  'Follow-up' (id 3): message_text" in lines
    assert "    - Just checking in: is there anything else we can help with?" in lines
    assert "    + Anything else we can do for you?" in lines
    assert "! keep   'Old promo' (id 4): not in the folder, kept (--prune removes it)" in lines
    assert "2 unchanged, 2 to change" in lines and "dry run: 2 change(s) not applied" in lines
    assert _mutations(simulator) == []


def test_sync_creates_uploads_once_and_a_second_sync_makes_no_call(
    simulator: SimulatorHandle, rules_dir: Path
) -> None:
    code, out = _cli(simulator, rules_dir, "predefined", "sync")
    assert code == 0, out
    assert _mutations(simulator) == [
        "POST /conversation-predefined-messages",
        "POST /conversation-predefined-messages",
        "POST /conversation-predefined-messages",
        "POST /s3-url-signing",
        "PUT " + simulator.sim.audit_log()[4].path,
        "POST /conversation-predefined-messages",
    ]
    assert simulator.sim.audit_log()[4].path.endswith("/price-list.pdf")
    price = next(r for r in simulator.sim.store.predefined.records.values() if r["title"] == "Price list")
    pdf = (rules_dir / "files" / "price-list.pdf").read_bytes()
    assert price["file_size"] == len(pdf) and simulator.sim.store.uploads[price["s3_key"]] == len(pdf)
    before = len(simulator.sim.audit_log())
    code, again = _cli(simulator, rules_dir, "predefined", "sync")
    assert code == 0 and again.splitlines() == ["4 unchanged, 0 to change"]
    assert len(simulator.sim.audit_log()) == before


def test_prune_removes_what_the_folder_does_not_have(simulator: SimulatorHandle, rules_dir: Path) -> None:
    simulator.sim.seed(3, seed=1)
    simulator.sim.predefined_message("Old promo", "20% off this week")
    code, out = _cli(simulator, rules_dir, "predefined", "sync", "--prune")
    assert code == 0, out
    assert "- remove 'Old promo' (id 4)" in out.splitlines()
    titles = sorted(r["title"] for r in simulator.sim.store.predefined.records.values())
    assert titles == ["Follow-up", "Greeting", "Out of hours", "Price list"]


def test_a_sync_whose_create_answer_was_lost_creates_no_duplicate(
    simulator: SimulatorHandle, rules_dir: Path
) -> None:
    simulator.sim.seed(3, seed=1)
    simulator.sim.set_faults(commit_then_fail_rate=1.0, paths=["/conversation-predefined-messages"], seed=2)
    code, out = _cli(simulator, rules_dir, "predefined", "sync")
    assert code == 3 and "inboxpilot: the API at " in out  # the API failed: exit 3, one line
    simulator.sim.set_faults(commit_then_fail_rate=0.0)
    code, out = _cli(simulator, rules_dir, "predefined", "sync")
    assert code == 0 and out.splitlines() == ["4 unchanged, 0 to change"]
    titles = [r["title"] for r in simulator.sim.store.predefined.records.values()]
    assert sorted(titles) == ["Follow-up", "Greeting", "Out of hours", "Price list"]


def test_validate_checks_predefined_titles_in_the_folder_and_online(
    simulator: SimulatorHandle, rules_dir: Path
) -> None:
    assert _cli(simulator, rules_dir, "validate", str(rules_dir))[0] == 0
    (rules_dir / "rules.yaml").write_text(RULE.replace('"Greeting"', '"Greetings"'))
    code, out = _cli(simulator, rules_dir, "validate", str(rules_dir))
    assert code == 1
    assert (
        f"{rules_dir / 'rules.yaml'}:3:1: rule 'greet': then[0].reply.predefined: no predefined message"
        in out
    )
    assert "'Greetings' in the predefined/ folder (known: 'Follow-up', 'Greeting'," in out
    (rules_dir / "rules.yaml").write_text(RULE.replace('"Greeting"', '"Price list"'))
    assert _cli(simulator, rules_dir, "validate", str(rules_dir))[0] == 0
    code, out = _cli(simulator, rules_dir, "validate", "--online", str(rules_dir))
    assert code == 1 and "no predefined message 'Price list' in the API" in out
    simulator.sim.seed(3, seed=1)
    _cli(simulator, rules_dir, "predefined", "sync")
    assert _cli(simulator, rules_dir, "validate", "--online", str(rules_dir))[0] == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("title: X\ntext: hi\nattachment: files/missing.pdf\n", "no such file"),
        ("title: X\ntext: hi\nattachment: ../secret.pdf\n", "inside the rules folder"),
        ("title: X\ntext: hi\nattachment: https://example.com/a.pdf\n", "relative to the rules folder"),
        ("title: X\ntext: hi\nattachment: files/fake.pdf\n", "is not a PDF file"),
        ("title: X\ntext: hi\nattachment: files/tool.exe\n", "unsupported file type .exe"),
        ("title: X\ntext: '{{ contact.nickname }}'\n", "unknown placeholder"),
        ("title: X\nbody: hi\n", "unknown key 'body'"),
        ("title: Greeting\ntext: again\n", "duplicate title 'Greeting'"),
    ],
)
def test_a_bad_canned_reply_is_a_located_error(
    simulator: SimulatorHandle, rules_dir: Path, content: str, message: str
) -> None:
    (rules_dir / "files" / "fake.pdf").write_text("not a pdf")
    (rules_dir / "files" / "tool.exe").write_bytes(b"MZ")
    bad = rules_dir / "predefined" / "zz-bad.yaml"
    bad.write_text(content)
    for args in (("validate", str(rules_dir)), ("predefined", "sync", "--dry-run")):
        code, out = _cli(simulator, rules_dir, *args)
        assert code == 1, out
        assert f"{bad}:" in out and message in out, out
    assert _mutations(simulator) == []
