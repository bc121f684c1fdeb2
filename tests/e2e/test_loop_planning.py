"""The loop up to the queue: polling, evaluation, timers, planning and ledger claims,
against the simulator over loopback. Execution is covered in test_execution/test_actors."""

from __future__ import annotations

from datetime import timedelta

from tests.e2e.conftest import CountingTransport, RuntimeFactory
from tests.support.dispatchers import Collector
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle

ASSIGN_NEW = """
rules:
  - id: assign-new
    once: per_conversation
    when: {status: open, owner: unset}
    then:
      - assign: 201
"""

WAITING = """
rules:
  - id: escalate-waiting
    once: per_inbound_message
    when: {status: open, waiting_for_reply: {longer_than: 15m}}
    then:
      - move: {pipeline: 1, stage: 90}
"""


def _loop(runtime_factory: RuntimeFactory, rules: str, **settings: object) -> tuple[Loop, Collector]:
    collector = Collector()
    loop = Loop(runtime_factory(rules, **settings), collector, fencing_token=None)
    return loop, collector


def _leader(loop: Loop) -> None:
    """Give the loop a real fencing token so it may move the watermark."""
    from worker.state.lease import LeaderLease

    lease = LeaderLease(loop.runtime.redis, "scheduler", 30, loop.runtime.clock)
    assert lease.try_acquire()
    loop.fencing_token = lambda: lease.token


def test_new_conversation_is_planned_once(simulator: SimulatorHandle, make_runtime: RuntimeFactory) -> None:
    loop, collector = _loop(make_runtime, ASSIGN_NEW)
    _leader(loop)
    conv = simulator.sim.new_conversation(channel="webchat")
    first = loop.poll_once()
    assert [s.kind for s in first.steps] == ["bulk"]
    assert first.steps[0].bulk is not None
    assert first.steps[0].bulk.as_fields() == {"owner_id": 201}
    assert [i.conversation_id for i in first.steps[0].items] == [conv["id"]]
    # The same situation again (a resync, a second tick after a change): nothing new is enqueued.
    simulator.sim.customer_message(conv["id"], "anyone?")
    again = loop.poll_once()
    resync = loop.resync_once()
    assert again.steps == [] and resync.steps == []
    assert len(collector.steps) == 1


def test_quiet_tick_costs_one_request(simulator: SimulatorHandle, make_runtime: RuntimeFactory) -> None:
    transport = CountingTransport()
    simulator.sim.seed(120, seed=3)
    loop, _ = _loop(make_runtime, ASSIGN_NEW, transport=transport)
    _leader(loop)
    loop.poll_once()
    transport.requests.clear()
    report = loop.poll_once()
    assert report.conversations == 0
    assert transport.requests == [("GET", "/conversations")]


def test_120_matches_become_3_bulk_steps(simulator: SimulatorHandle, make_runtime: RuntimeFactory) -> None:
    for _ in range(120):
        simulator.sim.new_conversation(channel="sms")
    loop, collector = _loop(make_runtime, ASSIGN_NEW)
    _leader(loop)
    loop.poll_once()
    sizes = sorted(len(s.items) for s in collector.steps)
    assert sizes == [20, 50, 50]
    assert len({i.conversation_id for s in collector.steps for i in s.items}) == 120


def test_records_sharing_the_boundary_timestamp_are_not_lost(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    """Many conversations changed in the same millisecond, spanning pages and ticks."""
    loop, collector = _loop(make_runtime, ASSIGN_NEW, page_size=7)
    _leader(loop)
    first = [simulator.sim.new_conversation(channel="sms")["id"] for _ in range(10)]
    loop.poll_once()
    # Same clock instant: more records at the watermark's exact timestamp.
    later = [simulator.sim.new_conversation(channel="sms")["id"] for _ in range(9)]
    loop.poll_once()
    planned = [i.conversation_id for s in collector.steps for i in s.items]
    assert sorted(planned) == sorted(first + later)


def test_time_rule_schedules_a_timer_and_fires_when_due(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    loop, _ = _loop(make_runtime, WAITING)
    _leader(loop)
    conv = simulator.sim.new_conversation(channel="webchat")
    assert loop.poll_once().steps == []
    due = loop.runtime.timers.due_at("escalate-waiting", conv["id"])
    assert due == simulator.clock.now() + timedelta(minutes=15)
    simulator.clock.advance(timedelta(minutes=14, seconds=59))
    assert loop.pump_once().steps == []
    simulator.clock.advance(timedelta(seconds=1))
    fired = loop.pump_once()
    assert [i.conversation_id for s in fired.steps for i in s.items] == [conv["id"]]
    assert loop.pump_once().steps == []


def test_team_reply_cancels_the_timer(simulator: SimulatorHandle, make_runtime: RuntimeFactory) -> None:
    loop, _ = _loop(make_runtime, WAITING)
    _leader(loop)
    conv = simulator.sim.new_conversation(channel="webchat")
    loop.poll_once()
    assert loop.runtime.timers.due_at("escalate-waiting", conv["id"]) is not None
    simulator.clock.advance(60)
    simulator.sim.team_reply(conv["id"])
    loop.poll_once()
    assert loop.runtime.timers.due_at("escalate-waiting", conv["id"]) is None


def test_dry_run_claims_nothing(simulator: SimulatorHandle, make_runtime: RuntimeFactory) -> None:
    collector = Collector()
    runtime = make_runtime(ASSIGN_NEW)
    loop = Loop(runtime, collector, dry_run=True)
    simulator.sim.new_conversation(channel="sms")
    assert len(loop.poll_once().steps) == 1
    assert len(loop.poll_once().steps) == 1  # nothing claimed, nothing remembered
    assert runtime.ledger.pending_count() == 0


POOL = """
agents:
  - {id: 301}
  - {id: 302}
pools:
  desk: {members: [301, 302]}
rules:
  - id: route
    when: {status: open, owner: unset}
    then:
      - assign: {pool: desk}
"""


def test_dry_run_previews_pool_choices_without_moving_the_pointer(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    runtime = make_runtime(POOL)
    first, second = (simulator.sim.new_conversation(channel="sms")["id"] for _ in range(2))
    preview = Loop(runtime, Collector(), dry_run=True).poll_once()
    owners = {
        i.conversation_id: s.bulk.as_fields()["owner_id"] for s in preview.steps if s.bulk for i in s.items
    }
    assert owners == {first: 301, second: 302}
    again = Loop(runtime, Collector(), dry_run=True).poll_once()
    assert {
        i.conversation_id: s.bulk.as_fields()["owner_id"] for s in again.steps if s.bulk for i in s.items
    } == owners
    assert runtime.redis.keys("inboxpilot:routing:*") == []
