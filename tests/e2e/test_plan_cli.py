"""`inboxpilot plan` reads like a plan: each action with its target or text, what a send
will really do under the 24-hour window, grouped by rule, short keys, 120 columns, deferred
actions grouped with their reasons; `--json` holds all of it; `--full` never sees less."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from worker.cli import app
from worker.simulator.testing import SimulatorHandle


@pytest.fixture(autouse=True)
def _empty_redis(redis_client: redis.Redis) -> None:
    """The CLI reads the shared Redis (ledger, watermark): start each test on an empty one."""


RULES = """
agents:
  - {id: 101, name: Ana, capacity: 5}
  - {id: 102, name: Ben, capacity: 0}
pools:
  frontline: {members: [101]}
  nobody: {members: [102]}
rules:
  - id: route-new
    when: {status: open, owner: unset, channel: sms}
    then:
      - assign: {pool: frontline}
      - note: "Handed on to the next free agent, who will answer you shortly"
  - id: park
    when: {status: open, channel: webchat}
    then:
      - move: {pipeline: 1, stage: 12}
  - id: nudge
    when: {status: open, channel: [whatsapp, instagram]}
    then:
      - reply: {text: "Still there?", outside_window: template, template: checkin}
  - id: stuck
    when: {status: open, channel: messenger}
    then:
      - assign: {pool: nobody}
"""


def _plan(simulator: SimulatorHandle, rules: Path, redis_url: str, *args: str) -> str:
    env = {
        "INBOXPILOT_API_URL": simulator.url,
        "INBOXPILOT_API_TOKEN": simulator.token,
        "INBOXPILOT_RULES_PATH": str(rules),
        "INBOXPILOT_REDIS_URL": redis_url,
    }
    result = CliRunner().invoke(app, ["plan", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def _conversations(simulator: SimulatorHandle) -> dict[str, int]:
    """One conversation per case; the CLI's clock is the wall clock, so the simulator's is too."""
    now = datetime.now(UTC)
    sim = simulator.sim
    simulator.clock.set(now - timedelta(hours=30))
    ids = {
        "closed-window-whatsapp": sim.new_conversation(channel="whatsapp")["id"],
        "closed-window-instagram": sim.new_conversation(channel="instagram")["id"],
    }
    simulator.clock.set(now - timedelta(minutes=5))
    for name, channel in [("sms", "sms"), ("webchat", "webchat"), ("open-window", "whatsapp")]:
        ids[name] = sim.new_conversation(channel=channel)["id"]
    ids["messenger"] = sim.new_conversation(channel="messenger")["id"]
    ids["closed"] = sim.new_conversation(channel="sms")["id"]
    sim.human_change(ids["closed"], {"status": "closed"})
    simulator.clock.set(now)
    return {k: int(v) for k, v in ids.items()}


def test_plan_text_names_targets_and_texts_and_the_real_send(
    simulator: SimulatorHandle, tmp_path: Path, redis_url: str
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    ids = _conversations(simulator)
    text = _plan(simulator, rules, redis_url)
    lines = text.splitlines()

    def line_of(name: str) -> str:
        (found,) = [ln for ln in lines if ln.startswith(f"  conversation {ids[name]} ")]
        return found

    assert 'assign → Ana (pool frontline); note "Handed on to the next' in line_of("sms")
    assert "move → pipeline 1 stage 12" in line_of("webchat")
    assert "reply → template checkin (window closed)" in line_of("closed-window-whatsapp")
    assert 'reply "Still there?"  [' in line_of("open-window")
    assert "reply → skip (templates exist on whatsapp only, not instagram)" in line_of(
        "closed-window-instagram"
    )
    assert "assign (pool nobody): deferred" in line_of("messenger")
    # Grouped by rule, each group under its own heading, in one block.
    headings = [ln for ln in lines if re.match(r"^[a-z][a-z-]+ \(\d+ firings?\)$", ln)]
    assert [h.split()[0] for h in headings] == ["nudge", "park", "route-new", "stuck"]
    # Deferred actions: the reason once per group, agents by name, each agent once.
    deferred = text.split("deferred (not planned now", 1)[1]
    assert "stuck: pool 'nobody': nobody available (Ben: at capacity (0/0))" in deferred
    assert f"conversation {ids['messenger']}" in deferred and deferred.count("Ben") == 1
    # Short keys, 120 columns.
    assert not re.search(r"\d\d:\d\d:\d\d\.\d+", text), text
    assert max(len(ln) for ln in lines) <= 120, max(lines, key=len)
    assert "[c]" in line_of("sms")


def test_plan_json_is_complete_with_deferred_entries_and_sends(
    simulator: SimulatorHandle, tmp_path: Path, redis_url: str
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    ids = _conversations(simulator)
    data = json.loads(_plan(simulator, rules, redis_url, "--json"))
    by_conv = {f["conversation"]: f for f in data["firings"]}
    sends = {
        c: [a["send"] for a in by_conv[ids[c]]["actions"]] for c in ("closed-window-whatsapp", "open-window")
    }
    assert sends == {"closed-window-whatsapp": ["template checkin (window closed)"], "open-window": ["reply"]}
    assign, note = by_conv[ids["sms"]]["actions"]
    assert assign["bulk"] == {"action": "assign", "fields": {"owner_id": 101}} and assign["do"].startswith(
        "assign → Ana"
    )
    assert note["action"]["text"].startswith("Handed on") and note["send"] == "note"
    (deferred,) = data["deferred"]
    assert (deferred["rule"], deferred["conversation"]) == ("stuck", ids["messenger"])
    assert "Ben: at capacity" in deferred["reason"]
    assert data["actions_planned"] == 6


def test_plan_full_evaluates_at_least_what_plan_does(
    simulator: SimulatorHandle, tmp_path: Path, redis_url: str
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    _conversations(simulator)  # one of them closed: the incremental poll sees it, the resync not
    changed = json.loads(_plan(simulator, rules, redis_url, "--json"))
    full = json.loads(_plan(simulator, rules, redis_url, "--full", "--json"))
    assert changed["conversations"] == 7
    assert full["conversations"] >= changed["conversations"]
    assert (full["open"], full["changed"]) == (6, 7)
