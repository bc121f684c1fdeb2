"""SLA escalation through the real loop (poll, due-timers, ledger, inline execution) against the
simulator on a fake clock: each tier acts at its deadline, never early, never twice, never for a
conversation answered in time, and paused time is skipped."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.e2e.conftest import RuntimeFactory
from tests.support.dispatchers import Inline
from tests.support.leading import lead
from worker.clock import FakeClock
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle

RULES = """
calendars:
  support:
    timezone: Europe/Berlin
    hours:
      mon: ["09:00-12:00", "13:00-18:00"]
      tue: ["09:00-12:00", "13:00-18:00"]
      wed: ["09:00-12:00", "13:00-18:00"]
      thu: ["09:00-12:00", "13:00-18:00"]
      fri: ["09:00-12:00", "13:00-18:00"]
sla_policies:
  std:
    calendar: support
    first_response: 1h
    next_response: 1h
    pause: {stages: [13]}
    tiers:
      - {at: 80%, metrics: [first_response], then: [{note: "[warn]"}]}
      - at: 100%
        then: [{note: "[breach]"}, {assign: 105}, {move: {pipeline: 1, stage: 14}}]
"""
WED_10_BERLIN = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
TOLERANCE = timedelta(seconds=2)


def make_loop(make_runtime: RuntimeFactory, rules: str) -> Loop:
    runtime = make_runtime(rules)
    loop = Loop(runtime, Inline(runtime))
    lead(loop, 30)
    return loop


def run_until(loop: Loop, clock: FakeClock, until: datetime) -> None:
    """Poll, then jump to each due-timer and pump it, like the scheduler's jobs on a fake clock."""
    while True:
        loop.poll_once()
        nxt = loop.runtime.timers.next_due()
        if nxt is None or nxt > until:
            break
        if nxt > clock.now():
            clock.set(nxt)
        loop.pump_once()
    if clock.now() < until:
        clock.set(until)
        loop.poll_once()


def effects(simulator: SimulatorHandle) -> dict[int, list[tuple[datetime, str]]]:
    """Applied POSTs per conversation: (time, what) with notes by their text."""
    out: dict[int, list[tuple[datetime, str]]] = defaultdict(list)
    for e in simulator.sim.audit_log():
        if e.method != "POST" or not e.applied:
            continue
        body: dict[str, Any] = e.body or {}
        ids = body.get("conversation_ids") or [body.get("conversation_id")]
        what = body.get("message_text") if "message_text" in body else body.get("action")
        for cid in ids:
            out[int(cid)].append((e.time, str(what)))
    return out


def at(simulator: SimulatorHandle, when: datetime) -> None:
    simulator.clock.set(when)


def test_tiers_act_on_time_once_and_skip_paused_and_answered(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    sim, clock = simulator.sim, simulator.clock
    at(simulator, WED_10_BERLIN)
    loop = make_loop(make_runtime, RULES)
    late = sim.new_conversation(channel="webchat")["id"]
    answered = sim.new_conversation(channel="webchat")["id"]
    paused = sim.new_conversation(channel="webchat")["id"]
    run_until(loop, clock, WED_10_BERLIN + timedelta(minutes=20))
    sim.human_change(paused, {"pipeline_stage_id": 13})
    run_until(loop, clock, WED_10_BERLIN + timedelta(minutes=30))
    sim.team_reply(answered)
    run_until(loop, clock, WED_10_BERLIN + timedelta(minutes=50))
    sim.human_change(paused, {"pipeline_stage_id": 12})
    run_until(loop, clock, WED_10_BERLIN + timedelta(hours=3))
    loop.resync_once()  # a full rescan finds nothing new to do
    seen = effects(simulator)

    expected = {
        late: {"[warn]": timedelta(minutes=48), "[breach]": timedelta(hours=1)},
        paused: {"[warn]": timedelta(minutes=78), "[breach]": timedelta(minutes=90)},
    }
    for cid, marks in expected.items():
        texts = [what for _, what in seen[cid]]
        assert sorted(texts) == sorted(["[warn]", "[breach]", "assign", "move"]), (cid, texts)
        for mark, offset in marks.items():
            (when,) = [t for t, what in seen[cid] if what == mark]
            deadline = WED_10_BERLIN + offset
            assert deadline <= when <= deadline + TOLERANCE, (cid, mark, when, deadline)
    assert not seen[answered]
    assert sim.conversation(late)["owner_id"] == 105
    assert sim.conversation(late)["pipeline_stage_id"] == 14


def test_next_response_breach_counts_business_time_over_the_night(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    sim, clock = simulator.sim, simulator.clock
    at(simulator, WED_10_BERLIN)
    loop = make_loop(make_runtime, RULES)
    cid = sim.new_conversation(channel="sms")["id"]
    clock.advance(timedelta(minutes=5))
    sim.team_reply(cid)
    evening = datetime(2026, 3, 4, 16, 30, tzinfo=UTC)  # 17:30 Berlin: 30 business minutes left today
    run_until(loop, clock, evening)
    sim.customer_message(cid, "still broken")
    clock.advance(timedelta(minutes=10))
    sim.customer_message(cid, "hello??")  # the same cycle: its opener is the first message
    run_until(loop, clock, datetime(2026, 3, 5, 12, 0, tzinfo=UTC))
    breaches = [t for t, what in effects(simulator)[cid] if what == "[breach]"]
    deadline = datetime(2026, 3, 5, 8, 30, tzinfo=UTC)  # Thursday 09:30 Berlin
    assert len(breaches) == 1 and deadline <= breaches[0] <= deadline + TOLERANCE
