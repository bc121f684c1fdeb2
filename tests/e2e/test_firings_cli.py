"""`inboxpilot firings`: the history of a conversation that had a done, a skipped and a
failed firing, each with what it did and why, read back from the worker's ledger."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from tests.e2e.conftest import RuntimeFactory
from tests.support.dispatchers import Collector
from tests.support.hostile_loop import capture_logs, events
from worker.cli import app
from worker.cli.firings_cmds import firing_line
from worker.execution.execute import execute
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle
from worker.state.history import HistoryQuery, read_history


@pytest.fixture(autouse=True)
def _empty_redis(redis_client: redis.Redis) -> None:
    """The CLI reads the shared Redis (ledger, watermark): start each test on an empty one."""


RULES = """
rules:
  - id: seen-note
    when: {status: open}
    then:
      - note: "Seen by the robot"
  - id: nudge
    when: {status: open, channel: whatsapp}
    then:
      - reply: {text: "Still there?", outside_window: skip}
  - id: park
    when: {status: open}
    then:
      - move: {pipeline: 1, stage: 90}
"""


def _fire_all(simulator: SimulatorHandle, make_runtime: RuntimeFactory) -> tuple[int, object]:
    # Near the real date: the CLI measures the ledger TTL from the wall clock.
    simulator.clock.set(datetime.now(UTC).replace(microsecond=0) - timedelta(hours=26))
    conv = int(simulator.sim.new_conversation(channel="whatsapp")["id"])
    simulator.clock.advance(timedelta(hours=25))  # the 24-hour window has closed
    runtime = make_runtime(RULES)
    collector = Collector()
    Loop(runtime, collector).poll_once()
    for step in collector.steps:
        execute(runtime, step)
    return conv, runtime


def test_history_of_a_conversation_with_done_skipped_and_failed_firings(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    logs = capture_logs()
    conv, runtime = _fire_all(simulator, make_runtime)
    found = read_history(
        runtime.redis,  # type: ignore[attr-defined]
        HistoryQuery(conversation=conv),
        simulator.clock.now(),
        runtime.settings.ledger_ttl_s,  # type: ignore[attr-defined]
    )
    by_rule = {f.rule_id: f for f in found}
    assert {r: f.outcome for r, f in by_rule.items()} == {
        "seen-note": "done",
        "nudge": "skipped",
        "park": "failed",
    }
    ruleset = runtime.rulebook.ruleset  # type: ignore[attr-defined]
    lines = {r: firing_line(f, ruleset) for r, f in by_rule.items()}
    assert f'conversation {conv}  done  note "Seen by the robot": done' in lines["seen-note"]
    assert 'reply "Still there?": skipped (outside_window: the 24-hour window is closed)' in lines["nudge"]
    assert "FAILED  move → pipeline 1 stage 90: failed (400" in lines["park"]
    # The failure spoke up at warning, with its reason.
    levels = {(e["rule"], e["outcome"]): e["level"] for e in events(logs, "firing_executed")}
    assert levels == {
        ("seen-note", "done"): "info",
        ("nudge", "skipped"): "info",
        ("park", "failed"): "warning",
    }
    (failure,) = [e for e in events(logs, "firing_executed") if e["outcome"] == "failed"]
    assert "pipeline_stage_id 90 is not a stage of pipeline 1" in failure["reason"]


def test_firings_command_filters_and_json(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory, redis_url: str, tmp_path: Path
) -> None:
    if not redis_url:
        pytest.skip("firings reads the worker's ledger from a shared Redis: set REDIS_URL")
    conv, _ = _fire_all(simulator, make_runtime)
    env = {"INBOXPILOT_REDIS_URL": redis_url, "INBOXPILOT_RULES_PATH": str(tmp_path / "rules.yaml")}
    runner = CliRunner()
    text = runner.invoke(app, ["firings", "-c", str(conv)], env=env)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert len(lines) == 3 and all(f"conversation {conv}" in ln for ln in lines), text.stdout
    failed = runner.invoke(app, ["firings", "-c", str(conv), "--outcome", "failed"], env=env)
    assert [ln.split()[2] for ln in failed.stdout.splitlines()] == ["park"]
    by_rule = runner.invoke(app, ["firings", "--rule", "nudge", "--since", "1d", "--json"], env=env)
    data = json.loads(by_rule.stdout)["firings"]
    assert [(f["rule"], f["outcome"]) for f in data] == [("nudge", "skipped")]
    assert data[0]["actions"][0]["reason"].startswith("outside_window")
    assert data[0]["actions"][0]["step"]["action"]["text"] == "Still there?"
    none = runner.invoke(app, ["firings", "-c", str(conv), "--since", "2999-01-01T00:00:00Z"], env=env)
    assert "no firings match (the history keeps the last 30 days" in none.stdout
    bad = runner.invoke(app, ["firings", "--since", "yesterday"], env=env)
    assert bad.exit_code == 2 and "neither a duration" in bad.output
