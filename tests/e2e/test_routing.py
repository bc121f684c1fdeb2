"""The routing bot through the real loop on a fake clock: Loop + inline execution against
the served simulator. Waiting lines, retries, oldest first, the return timer, offline
agents, and a human's reassignment never undone."""

from __future__ import annotations

from datetime import timedelta

from tests.e2e.conftest import CountingTransport, RuntimeFactory
from tests.scenarios.routing_properties import bot_assignments
from tests.support.dispatchers import Inline
from tests.support.leading import lead, tick
from worker.execution.execute import execute
from worker.scheduling.router import Router
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle

# The fake clock starts Monday 2026-11-02 09:00 UTC.
ROSTER = """
calendars:
  day:
    timezone: UTC
    hours: {mon: ["09:00-17:00"], tue: ["09:00-17:00"], wed: ["09:00-17:00"], thu: ["09:00-17:00"],
            fri: ["09:00-17:00"], sat: ["09:00-17:00"], sun: ["09:00-17:00"]}
  late:
    timezone: UTC
    hours: {mon: ["10:00-18:00"]}
agents:
  - {id: 1, capacity: 1, calendar: day}
  - {id: 2, capacity: 1, calendar: day}
  - {id: 9, name: Lead}
pools:
  front: {members: [1, 2], strategy: round_robin}
"""

ROUTE = (
    ROSTER
    + """
rules:
  - id: route
    once: per_assignment
    when: {status: open, owner: unset}
    then: [{assign: {pool: front}}]
"""
)


def _loop(
    make_runtime: RuntimeFactory, rules: str, *, leader: bool = True, **settings: object
) -> tuple[Loop, Inline]:
    runtime = make_runtime(rules, **settings)
    inline = Inline(runtime)
    loop = Loop(runtime, inline)
    if leader:
        lead(loop, 30)
    return loop, inline


def _owner(sim: SimulatorHandle, conversation_id: int) -> int | None:
    return sim.sim.conversation(conversation_id)["owner_id"]


def test_full_pool_defers_then_backfills_oldest_first(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    loop, _ = _loop(make_runtime, ROUTE)
    a = simulator.sim.new_conversation(channel="webchat")["id"]
    simulator.clock.advance(1)
    b = simulator.sim.new_conversation(channel="webchat")["id"]
    tick(loop)
    assert {_owner(simulator, a), _owner(simulator, b)} == {1, 2}  # both agents full now
    waiting = []
    for _ in range(3):
        simulator.clock.advance(10)
        waiting.append(simulator.sim.new_conversation(channel="webchat")["id"])
    tick(loop)
    assert [c for c, _ in loop.router.line("front")] == waiting
    assert all(_owner(simulator, c) is None for c in waiting)
    # Agent 1 closes one: the oldest waiting conversation gets the place, not the newest.
    simulator.sim.human_change(a, {"status": "closed"})
    simulator.clock.advance(5)
    newest = simulator.sim.new_conversation(channel="webchat")["id"]
    tick(loop)
    simulator.clock.advance(Router.__init__.__kwdefaults__["retry_s"])
    tick(loop)
    assert _owner(simulator, waiting[0]) == 1
    assert all(_owner(simulator, c) is None for c in [*waiting[1:], newest])
    assert [c for c, _ in loop.router.line("front")] == [*waiting[1:], newest]


def test_a_deferral_does_not_spin_the_api(simulator: SimulatorHandle, make_runtime: RuntimeFactory) -> None:
    transport = CountingTransport()
    loop, _ = _loop(make_runtime, ROUTE, transport=transport)
    for _ in range(3):
        simulator.sim.new_conversation(channel="sms")
    tick(loop)  # two assigned, one waits in line
    assert len(loop.router.line("front")) == 1
    transport.requests.clear()
    for _ in range(59):  # a minute of quiet 1-second ticks before the pool's retry
        simulator.clock.advance(1)
        tick(loop)
    assert transport.requests == [("GET", "/conversations")] * 59  # the incremental poll only
    simulator.clock.advance(1)
    transport.requests.clear()
    tick(loop)
    # The retry: the poll, the re-read of the waiting conversation, the members' loads, the line.
    assert len(transport.requests) <= 4, transport.requests
    assert len(loop.router.line("front")) == 1


def test_deferred_until_the_next_shift_starts(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    rules = ROUTE.replace("- {id: 2, capacity: 1, calendar: day}", "- {id: 2, capacity: 1, calendar: late}")
    rules = rules.replace("- {id: 1, capacity: 1, calendar: day}", "- {id: 1, capacity: 1, calendar: late}")
    loop, _ = _loop(make_runtime, rules)
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    tick(loop)
    assert _owner(simulator, conv) is None
    due = loop.runtime.timers.due_at("route", conv)
    assert due == simulator.clock.now().replace(hour=10, minute=0, second=0, microsecond=0)
    simulator.clock.set(due)
    tick(loop)
    assert _owner(simulator, conv) == 1


def test_round_robin_pointer_survives_a_restart(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    rules = ROUTE.replace("capacity: 1, ", "")
    loop, _ = _loop(make_runtime, rules)
    first = simulator.sim.new_conversation(channel="sms")["id"]
    tick(loop)
    restarted, _ = _loop(make_runtime, rules, leader=False)  # a new process: only Redis is shared
    restarted.fencing_token = loop.fencing_token
    second = simulator.sim.new_conversation(channel="sms")["id"]
    simulator.clock.advance(1)
    tick(restarted)
    assert [_owner(simulator, first), _owner(simulator, second)] == [1, 2]


def test_human_reassignment_between_planning_and_execution_wins(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    loop, inline = _loop(make_runtime, ROUTE)
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    inline.hold = True
    tick(loop)
    (step,) = inline.steps
    simulator.sim.reassign(conv, 9)  # a person takes it while the step waits in the queue
    execute(loop.runtime, step)
    assert _owner(simulator, conv) == 9
    assert not bot_assignments(simulator.sim.audit_log())
    entry = loop.runtime.ledger.get(step.items[0].key)
    assert entry is not None and entry.state == "done"


def test_human_reassignment_after_the_bot_is_never_undone(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    rules = ROUTE + RETURN_TIMER.split("rules:\n", 1)[1]
    loop, _ = _loop(make_runtime, rules)
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    tick(loop)
    assert _owner(simulator, conv) == 1
    simulator.clock.advance(30)
    simulator.sim.reassign(conv, 9)
    for _ in range(6):  # an hour: the return timer's window passes several times
        simulator.clock.advance(timedelta(minutes=10))
        simulator.sim.customer_message(conv, "still there?")
        tick(loop)
        loop.resync_once()
    assert _owner(simulator, conv) == 9
    assert [a.owner_id for a in bot_assignments(simulator.sim.audit_log())] == [1]


RETURN_TIMER = (
    ROSTER.replace("capacity: 1, ", "")
    + """
rules:
  - id: return
    once: per_assignment
    max_per_conversation: 2
    when:
      status: open
      owner: [1, 2]
      owner_unresponsive: 15m
    then: [{assign: {pool: front, exclude_current: true}}]
"""
)


def test_return_timer_hands_on_each_time_up_to_the_cap(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    loop, _ = _loop(make_runtime, RETURN_TIMER)
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    simulator.sim.reassign(conv, 1)
    tick(loop)
    assert loop.runtime.timers.due_at("return", conv) == simulator.clock.now() + timedelta(minutes=15)
    owners = []
    for _ in range(4):
        simulator.clock.advance(timedelta(minutes=15))
        tick(loop)
        owners.append(_owner(simulator, conv))
    assert owners == [2, 1, 1, 1]  # two hops, then the cap holds
    # An answer stops the timer: no hand-on however long after.
    simulator.sim.team_reply(conv, user_id=1)
    tick(loop)
    assert loop.runtime.timers.due_at("return", conv) is None


OFFLINE = (
    ROSTER.replace("capacity: 1, ", "").replace("{id: 2, calendar: day}", "{id: 2}")
    + """
rules:
  - id: hand-on
    once: per_assignment
    when:
      status: open
      owner: [1, 2]
      waiting_for_reply: 1m
      owner_unavailable: {grace: 10m}
    then: [{assign: {pool: front, exclude_current: true}}]
"""
)


def test_offline_owner_hands_on_after_the_grace_period(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    loop, _ = _loop(make_runtime, OFFLINE)
    simulator.clock.set(simulator.clock.now().replace(hour=16, minute=50))
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    simulator.sim.reassign(conv, 1)
    tick(loop)
    shift_end = simulator.clock.now().replace(hour=17, minute=0)
    assert loop.runtime.timers.due_at("hand-on", conv) == shift_end + timedelta(minutes=10)
    simulator.clock.set(shift_end + timedelta(minutes=9, seconds=59))
    tick(loop)
    assert _owner(simulator, conv) == 1
    simulator.clock.advance(1)
    tick(loop)
    assert _owner(simulator, conv) == 2  # agent 2 has no calendar: always on


def test_switched_off_owner_hands_on_and_reopened_conversations_go_to_someone_on_shift(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    rules = OFFLINE.replace("{id: 1, calendar: day}", "{id: 1, calendar: day, enabled: false}")
    loop, _ = _loop(make_runtime, rules)
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    simulator.sim.reassign(conv, 1)
    simulator.sim.human_change(conv, {"status": "closed"})
    tick(loop)
    simulator.clock.advance(timedelta(hours=2))
    simulator.sim.customer_message(conv, "me again")  # reopens, still owned by agent 1
    tick(loop)
    assert _owner(simulator, conv) == 1  # within the grace period
    simulator.clock.advance(timedelta(minutes=10))
    tick(loop)
    assert _owner(simulator, conv) == 2


def test_a_conversation_a_person_unassigns_is_routed_again(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    """Unassignment opens a new per_assignment situation: the routing rule acts again, once."""
    rules = """
rules:
  - id: route
    once: per_assignment
    when: {status: open, owner: unset}
    then:
      - assign: 111
"""
    loop, _ = _loop(make_runtime, rules)
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    tick(loop)
    assert _owner(simulator, conv) == 111
    simulator.clock.advance(60)
    simulator.sim.reassign(conv, None)
    tick(loop)
    tick(loop)
    assert _owner(simulator, conv) == 111
    assert len(simulator.sim.audit.applied("POST", "/conversations-bulk-actions")) == 2
