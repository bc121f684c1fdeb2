"""Replies with a file, end to end through the real loop: tag, reply with a PDF, close.

The simulator's audit log is the judge: one stored object per file content, one
`/conversation-files` record per conversation and content, one send per situation,
also when the upload and the send are applied and their answers lost."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.e2e import test_loop_e2e
from tests.e2e._exec_helpers import flush_redis
from tests.e2e.test_loop_e2e import Start
from worker.api.services import BULK_ACTIONS, SEND_PATHS
from worker.cli import app
from worker.simulator.audit import AuditEntry
from worker.simulator.testing import SimulatorHandle

start = test_loop_e2e.start  # the whole-loop fixture: scheduler loop, Redis broker, worker threads

ROOT = Path(__file__).resolve().parents[2]
PDF = ROOT / "rules" / "files" / "price-list.pdf"
PRICE_TEXT = "Here is our price list."
RULES = f"""
rules:
  - id: price-list
    once: per_inbound_message
    when: {{status: open, message_text: price}}
    then:
      - tag: priced
      - reply: {{text: "{PRICE_TEXT}", attachment: files/price-list.pdf}}
      - set_status: closed
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """The PDF next to the rules file the `start` fixture writes (tmp_path/rules.yaml)."""
    (tmp_path / "files").mkdir()
    shutil.copy(PDF, tmp_path / "files" / "price-list.pdf")
    return tmp_path


def _applied(simulator: SimulatorHandle, method: str, prefix: str) -> list[AuditEntry]:
    return simulator.sim.audit.applied(method, prefix)


def _sends(simulator: SimulatorHandle, conversation_id: int) -> list[AuditEntry]:
    return [
        e
        for path in SEND_PATHS.values()
        for e in _applied(simulator, "POST", path)
        if e.body.get("conversation_id") == conversation_id
    ]


def _objects_per_content(simulator: SimulatorHandle) -> Counter[str]:
    """Distinct stored objects per content hash (a PUT retried to the same key rewrites one object)."""
    keys = {(e.body["sha256"], e.path) for e in _applied(simulator, "PUT", "/__uploads/")}
    return Counter(sha for sha, _ in keys)


def _file_records(simulator: SimulatorHandle) -> Counter[int]:
    return Counter(e.body["conversation_id"] for e in _applied(simulator, "POST", "/conversation-files"))


def test_tag_reply_with_a_pdf_and_close_run_once_each(
    simulator: SimulatorHandle, start: Start, files: Path
) -> None:
    running = start(RULES)
    web = [simulator.sim.new_conversation(channel="webchat", text="price please?")["id"] for _ in range(2)]
    sms = simulator.sim.new_conversation(channel="sms", text="price?")["id"]
    for _ in range(3):
        running.tick()
    # One object for the one content, one file record per webchat conversation, one send each.
    assert list(_objects_per_content(simulator).values()) == [1]
    assert len(_applied(simulator, "PUT", "/__uploads/")) == 1
    assert _file_records(simulator) == Counter(web)
    for cid in web:
        (send,) = _sends(simulator, cid)
        assert send.body["message_text"] == PRICE_TEXT and send.body["conversation_file_id"]
        assert send.body["file_size"] == PDF.stat().st_size
    # SMS cannot carry a file: the text alone (if_unsupported: text, the default).
    (text_only,) = _sends(simulator, sms)
    assert text_only.body["message_text"] == PRICE_TEXT and "conversation_file_id" not in text_only.body
    for cid in [*web, sms]:
        record = simulator.sim.conversation(cid)
        assert record["tags"] == ["priced"] and record["status"] == "closed"
    closes = [e for e in _applied(simulator, "POST", BULK_ACTIONS) if e.body["action"] == "update_status"]
    assert sorted(c for e in closes for c in e.body["conversation_ids"]) == sorted([*web, sms])


def test_a_second_situation_reuses_the_upload_and_the_file_record(
    simulator: SimulatorHandle, start: Start, files: Path
) -> None:
    running = start(RULES)
    cid = simulator.sim.new_conversation(channel="webchat", text="price?")["id"]
    running.tick()
    simulator.clock.advance(timedelta(minutes=5))
    simulator.sim.customer_message(cid, "and the price for teams?")  # reopens: a new situation
    running.tick()
    running.tick()
    assert len(_sends(simulator, cid)) == 2
    assert len(_applied(simulator, "PUT", "/__uploads/")) == 1
    assert _file_records(simulator) == Counter({cid: 1})
    assert len({e.body["conversation_file_id"] for e in _sends(simulator, cid)}) == 1


def _fault_until_hit(simulator: SimulatorHandle, path: str, deadline_s: float = 60.0) -> None:
    """Apply-then-fail every write under `path` until one such write was answered with a fault."""
    simulator.sim.set_faults(commit_then_fail_rate=1.0, paths=[path], seed=11)
    give_up = time.monotonic() + deadline_s
    while not any(e.fault and e.path.startswith(path) for e in simulator.sim.audit_log()):
        assert time.monotonic() < give_up, f"no write under {path} within {deadline_s} s"
        time.sleep(0.02)  # polling the audit log with a deadline; the workers do the work
    simulator.sim.set_faults(commit_then_fail_rate=0.0)


def test_commit_then_fail_on_the_upload_and_the_send_still_sends_once(
    simulator: SimulatorHandle, start: Start, files: Path
) -> None:
    running = start(RULES)
    ids = [simulator.sim.new_conversation(channel="webchat", text="price?")["id"] for _ in range(3)]
    simulator.sim.set_faults(commit_then_fail_rate=1.0, paths=["/__uploads/"], seed=11)
    running.loop.poll_once()
    # Each write of the chain is applied and its answer lost (503 or a dropped connection), in turn.
    for path in ("/__uploads/", "/conversation-files", SEND_PATHS["webchat"]):
        _fault_until_hit(simulator, path)
    running.drain()
    for _ in range(2):
        running.tick()
    faulted = {e.path.split("/")[1] for e in simulator.sim.audit_log() if e.fault and e.applied}
    assert faulted == {"__uploads", "conversation-files", SEND_PATHS["webchat"].strip("/")}
    assert list(_objects_per_content(simulator).values()) == [1]
    assert _file_records(simulator) == Counter(ids)
    for cid in ids:
        assert [e.body["message_text"] for e in _sends(simulator, cid)] == [PRICE_TEXT]
        assert simulator.sim.conversation(cid)["tags"] == ["priced"]
        assert simulator.sim.conversation(cid)["status"] == "closed"


INSTAGRAM_SKIP = """
rules:
  - id: brochure
    once: per_conversation
    when: {status: open}
    then:
      - reply: {text: "Our brochure", attachment: files/price-list.pdf, if_unsupported: skip}
"""


def test_a_channel_that_cannot_carry_the_file_skips_when_asked(
    simulator: SimulatorHandle, start: Start, files: Path
) -> None:
    running = start(INSTAGRAM_SKIP)
    insta = simulator.sim.new_conversation(channel="instagram")["id"]
    running.tick()
    assert _sends(simulator, insta) == []
    entry = running.app.runtime.ledger.get(f"brochure:{insta}:c#0")
    assert entry is not None and entry.outcome["result"] == "skipped"
    assert "instagram cannot carry file files" in entry.outcome["reason"]
    assert _applied(simulator, "PUT", "/__uploads/") == []


def test_plan_explain_and_backtest_name_the_attachment(
    simulator: SimulatorHandle, files: Path, redis_url: str
) -> None:
    flush_redis(redis_url)
    rules = files / "rules.yaml"
    rules.write_text(RULES)
    simulator.clock.set(datetime.now(UTC) - timedelta(hours=1))  # backtest looks back from real now
    cid = simulator.sim.new_conversation(channel="webchat", text="price?")["id"]
    env = {
        "INBOXPILOT_API_URL": simulator.url,
        "INBOXPILOT_API_TOKEN": simulator.token,
        "INBOXPILOT_RULES_PATH": str(rules),
        "INBOXPILOT_REDIS_URL": redis_url,
    }
    runner = CliRunner()
    plan = runner.invoke(app, ["plan", "--full"], env=env)
    assert plan.exit_code == 0, plan.output
    assert f'reply "{PRICE_TEXT}" + files/price-list.pdf' in plan.stdout
    assert "tags +priced; reply" in plan.stdout
    explain = runner.invoke(app, ["explain", "-c", str(cid)], env=env)
    assert explain.exit_code == 0, explain.output
    assert "with files/price-list.pdf" in explain.stdout
    backtest = runner.invoke(app, ["backtest", str(rules), "--since", "1d", "--json"], env=env)
    assert backtest.exit_code == 0, backtest.output
    (firing,) = json.loads(backtest.stdout)["firings"]
    assert any("with files/price-list.pdf" in a for a in firing["actions"])
    assert "tags +priced" in firing["steps"]
    # Looking is free: no upload, no file record, no send.
    assert [e for e in simulator.sim.audit_log() if e.method in ("POST", "PUT", "PATCH")] == []


def test_the_documented_attachment_rule_loads(tmp_path: Path) -> None:
    from worker.rules.loader import load_rules

    text = (ROOT / "rules" / "README.md").read_text()
    block = text.split("### Attachments", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "files").mkdir()
    shutil.copy(PDF, tmp_path / "files")
    (tmp_path / "rules.yaml").write_text(block)
    result = load_rules([tmp_path / "rules.yaml"])
    assert result.errors == ()
    (rule,) = result.ruleset.rules
    assert [a.key for a in rule.then] == ["tag", "reply", "set_status"]


CANNED = """
rules:
  - id: canned-prices
    once: per_inbound_message
    when: {status: open, message_text: price}
    then:
      - reply: {predefined: "Price list"}
"""


def test_a_canned_reply_with_a_file_sends_the_file_sync_uploaded(
    simulator: SimulatorHandle, start: Start, files: Path
) -> None:
    shutil.copytree(ROOT / "rules" / "predefined", files / "predefined")
    env = {
        "INBOXPILOT_API_URL": simulator.url,
        "INBOXPILOT_API_TOKEN": simulator.token,
        "INBOXPILOT_RULES_PATH": str(files),
    }
    synced = CliRunner().invoke(app, ["predefined", "sync"], env=env)
    assert synced.exit_code == 0, synced.output
    assert len(_applied(simulator, "PUT", "/__uploads/")) == 1
    running = start(CANNED)
    ids = [simulator.sim.new_conversation(channel="webchat", text="price?")["id"] for _ in range(2)]
    running.tick()
    running.tick()
    assert len(_applied(simulator, "PUT", "/__uploads/")) == 1  # the sync's upload, reused
    assert _file_records(simulator) == Counter(ids)
    for cid in ids:
        (send,) = _sends(simulator, cid)
        assert send.body["conversation_file_id"] and send.body["message_text"].endswith("price list.")
