"""`inboxpilot demo` as a newcomer sees it: plain lines naming people, stages and replies,
all three jobs (routing, SLA, follow-ups) in the first simulated 30 seconds whatever the
hour it runs at, and the same settings as `run` (INBOXPILOT_RULES_PATH)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from worker.cli.demo import Narrator
from worker.cli.words import clip, roughly
from worker.rules.loader import load_texts
from worker.state.ledger import LedgerEntry

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(\d\d:\d\d:\d\d)  (.*)$")


def run_demo(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXPILOT_")}
    # Rules found through the setting, as in the container image: there is no ./rules here.
    env["INBOXPILOT_RULES_PATH"] = str(ROOT / "rules")
    done = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--for", "6s", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, f"demo exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def firing_lines(output: str, start: str, within_s: float) -> list[str]:
    """The demo's event lines stamped within `within_s` of the simulated start."""
    begin = datetime.strptime(start, "%H:%M:%S")
    lines = []
    for raw in output.splitlines():
        match = LINE.match(raw)
        if match and datetime.strptime(match.group(1), "%H:%M:%S") - begin <= timedelta(seconds=within_s):
            lines.append(match.group(2))
    return lines


@pytest.mark.slow
def test_demo_shows_people_stages_and_replies_in_plain_words_first_30s(tmp_path: Path) -> None:
    out = run_demo(tmp_path)
    lines = firing_lines(out, "10:30:00", 30)
    assigned = [
        ln for ln in lines if re.match(r"assigned conversation \d+ to (Ana|Ben|Chloe) — pool frontline", ln)
    ]
    escalated = [ln for ln in lines if ln.startswith("escalated conversation") and "stage 14" in ln]
    followups = [
        ln for ln in lines if "rule followup-" in ln and re.search(r"(replied \"|sent template)", ln)
    ]
    assert assigned, out
    assert escalated and "overdue by" in escalated[0] and "Lead on call" in escalated[0], out
    assert followups and "customer silent" in followups[0], out
    # Plain words: no raw JSON, no batch counters; the summary counts firings and actions apart.
    assert "{" not in out and "processed_count" not in out
    assert re.search(r"route-new-in-hours\s+(\d+)\s+(\d+)\s+0\s+0", out), out
    assert "assignment(s) to people" in out


def test_demo_start_must_have_an_offset(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXPILOT_")}
    done = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--for", "1s", "--start", "2026-11-03T10:30:00"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "needs a UTC offset" in done.stderr


def test_words_helpers() -> None:
    assert roughly(timedelta(seconds=90061)) == "1d1h"
    assert roughly(timedelta(seconds=200)) == "3m20s"
    assert roughly(timedelta(0)) == "0s"
    assert clip("a " * 40, 10) == "a a a a a…"


def _entry(key: str, payload: dict[str, object], state: str = "done", **extra: object) -> LedgerEntry:
    at = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)
    rule_id, conversation_id = key.split(":")[:2]
    fields: dict[str, object] = {"rule_id": rule_id, "conversation_id": conversation_id}
    return LedgerEntry(key, state, 1, at, at, payload, **fields, **extra)  # type: ignore[arg-type]


def _narrator() -> Narrator:
    ruleset = load_texts([("r.yaml", "agents: [{id: 101, name: Ana}]\n")], strict=True).ruleset
    built = SimpleNamespace(runtime=SimpleNamespace(rulebook=SimpleNamespace(ruleset=ruleset)))
    return Narrator(built, None, UTC)  # type: ignore[arg-type]


def test_demo_phrases_name_people_stages_outcomes_and_reasons() -> None:
    narrator = _narrator()
    assign = {
        "kind": "bulk",
        "bulk": {"action": "assign", "fields": {"owner_id": 101}},
        "items": [],
        "action": {},
    }
    move = {"kind": "bulk", "bulk": {"action": "move", "fields": {"pipeline_id": 1, "pipeline_stage_id": 14}}}
    tags = {"kind": "tags", "items": [], "action": {"changes": {"r:3:c#0": {"add": ["vip"]}}}, "bulk": None}
    assert narrator.phrase(_entry("r:14:c#0", assign), "conversation 14") == "assigned conversation 14 to Ana"
    assert narrator.phrase(_entry("r:9:c#1", move), "it") == "moved it to pipeline 1 stage 14"
    assert narrator.phrase(_entry("r:3:c#0", tags), "conversation 3") == "set tags +vip on conversation 3"
    failed = _entry("r:9:c#1", move, "failed", reason="400 BadRequest: stage 90")
    assert narrator.phrase(failed, "it") == "FAILED to move it (400 BadRequest: stage 90)"
    skipped = _entry("r:9:c#0", assign, outcome={"result": "skipped", "reason": "moot: the team answered"})
    assert (
        narrator.phrase(skipped, "conversation 9")
        == "skipped 'assign' on conversation 9 (moot: the team answered)"
    )
