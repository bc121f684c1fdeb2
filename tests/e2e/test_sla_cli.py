"""`inboxpilot sla`: clocks read from the simulator, most urgent first, as a table and as JSON."""

from __future__ import annotations

import json
from datetime import timedelta

from tests.e2e.conftest import RuntimeFactory
from tests.e2e.test_sla_e2e import RULES, WED_10_BERLIN, make_loop, run_until
from worker.cli.sla_cmds import render, sla_clocks
from worker.simulator.testing import SimulatorHandle


def test_sla_lists_at_risk_and_breached_with_time_left(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    sim, clock = simulator.sim, simulator.clock
    clock.set(WED_10_BERLIN)
    loop = make_loop(
        make_runtime,
        RULES.replace(
            '{note: "[breach]"}, {assign: 105}, {move: {pipeline: 1, stage: 14}}', '{note: "[breach]"}'
        ),
    )
    old = sim.new_conversation(channel="webchat")["id"]
    clock.advance(timedelta(minutes=20))
    paused = sim.new_conversation(channel="webchat")["id"]
    run_until(loop, clock, clock.now() + timedelta(minutes=5))
    sim.human_change(paused, {"pipeline_stage_id": 13})
    clock.advance(timedelta(minutes=5))
    fresh = sim.new_conversation(channel="webchat")["id"]
    run_until(loop, clock, WED_10_BERLIN + timedelta(minutes=80))
    runtime = loop.runtime
    convs = list(runtime.api.conversations.find({"status": "open"}))
    found = sla_clocks(runtime.api, runtime.rulebook.ruleset, convs, clock.now(), runtime.settings)
    by_id = {c.conversation_id: c for c in found}
    assert by_id[old].state == "breached" and by_id[old].left == timedelta(minutes=-20)
    assert by_id[paused].state == "paused" and by_id[paused].due is None
    assert by_id[paused].used == timedelta(minutes=5)  # 20:00-25:00 ran, then paused
    assert by_id[fresh].state == "at_risk" and by_id[fresh].left == timedelta(minutes=10)
    assert found[0].conversation_id == old  # most urgent first
    table = render([c for c in found if c.state != "paused"], clock.now(), as_json=False)
    assert "20m over" in table and "10m left" in table
    data = json.loads(render(found, clock.now(), as_json=True))
    assert {c["state"] for c in data["clocks"]} == {"breached", "paused", "at_risk"}
