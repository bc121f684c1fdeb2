"""Issue 12: a firing keeps every promise the rule language makes, end to end on the
served simulator (Loop + executor, the executor queueing each firing's next action).

Each test names the issue's numbered case it proves."""

from __future__ import annotations

from collections import deque
from datetime import timedelta
from pathlib import Path

import pytest

from tests.e2e.conftest import RuntimeFactory
from tests.e2e.test_explain_cli import _explain
from worker.api.services import BULK_ACTIONS, SEND_PATHS
from worker.execution.execute import execute
from worker.metrics import BREAKER_TRIPS
from worker.rules.errors import RulesInvalid
from worker.rules.firing import Step
from worker.runtime import Runtime
from worker.scheduling.scheduler import SchedulerService
from worker.scheduling.tick import Loop
from worker.simulator.audit import AuditEntry
from worker.simulator.testing import SimulatorHandle
from worker.state.lease import LeaderLease

SHIPPED_RULES = Path(__file__).resolve().parents[2] / "rules"


class Queue:
    """A FIFO queue and its worker: steps run in the order queued, and the executor queues
    each firing's next action here as the actors do. `hold` stops the worker (a lagging
    worker); `drain` runs what is queued."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.queued: deque[Step] = deque()
        self.hold = False

    def enqueue(self, step: Step) -> None:
        self.queued.append(step)
        if not self.hold:
            self.drain()

    def drain(self) -> None:
        while self.queued:
            execute(self.runtime, self.queued.popleft(), self.queued.append)


def leader(make_runtime: RuntimeFactory, rules: str | Path, **settings: object) -> tuple[Loop, Queue]:
    runtime = make_runtime(rules, **settings)
    queue = Queue(runtime)
    loop = Loop(runtime, queue)
    lease = LeaderLease(runtime.redis, "scheduler", 3600, runtime.clock)
    assert lease.try_acquire()
    loop.fencing_token = lambda: lease.token
    return loop, queue


def tick(loop: Loop) -> None:
    loop.poll_once()
    loop.pump_once()


def owner(simulator: SimulatorHandle, conversation_id: int) -> int | None:
    return simulator.sim.conversation(conversation_id)["owner_id"]


def effects(simulator: SimulatorHandle, conversation_id: int) -> list[tuple[str, str]]:
    """The applied bulk actions and sends on one conversation, in the order the API saw them."""
    out: list[tuple[str, str]] = []
    for entry in simulator.sim.audit_log():
        if entry.method != "POST" or not entry.applied:
            continue
        if entry.path.startswith(BULK_ACTIONS) and conversation_id in entry.body.get("conversation_ids", []):
            out.append((str(entry.body["action"]), str(entry.body.get("owner_id", ""))))
        elif _is_send(entry) and entry.body.get("conversation_id") == conversation_id:
            out.append((str(entry.body.get("message_type", "text")), str(entry.body.get("message_text"))))
    return out


def _is_send(entry: AuditEntry) -> bool:
    return any(entry.path.startswith(path) for path in SEND_PATHS.values())


ROSTER = """
calendars:
  day:
    timezone: UTC
    hours: {mon: ["09:00-17:00"], tue: ["09:00-17:00"], wed: ["09:00-17:00"], thu: ["09:00-17:00"],
            fri: ["09:00-17:00"], sat: ["09:00-17:00"], sun: ["09:00-17:00"]}
agents:
  - {id: 1, name: Ana, calendar: day}
  - {id: 2, name: Ben, calendar: day}
pools:
  front: {members: [1, 2], strategy: round_robin}
"""


# --- case 1: ordered actions ----------------------------------------------------------------

ASSIGN_THEN_NOTE = (
    ROSTER
    + """
rules:
  - id: take
    once: per_conversation
    when: {status: open, owner: unset}
    then:
      - assign: 1
      - note: "Assigned to {{ agent.name }}"
"""
)


def test_case1_note_after_assign_names_the_new_owner(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    loop, _ = leader(make_runtime, ASSIGN_THEN_NOTE)
    conv = simulator.sim.new_conversation(channel="webchat")["id"]
    tick(loop)
    tick(loop)
    assert effects(simulator, conv) == [("assign", "1"), ("note", "Assigned to Ana")]


MOVE_UNASSIGN_NOTE = """
rules:
  - id: park
    once: per_conversation
    when: {status: open}
    then:
      - move: {pipeline: 1, stage: 12}
      - unassign
      - note: "Parked"
"""


def test_case1_bulk_positions_run_in_order_one_call_per_50(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    loop, _ = leader(make_runtime, MOVE_UNASSIGN_NOTE)
    convs = [simulator.sim.new_conversation(channel="sms")["id"] for _ in range(60)]
    for conv in convs:
        simulator.sim.reassign(conv, 5)
    tick(loop)
    bulk = [
        (e.body["action"], len(e.body["conversation_ids"]))
        for e in simulator.sim.audit_log()
        if e.method == "POST" and e.applied and e.path.startswith(BULK_ACTIONS)
    ]
    # Still one bulk call per 50 ids at each position; each conversation in the rule's order.
    assert sorted(bulk) == [("move", 10), ("move", 50), ("unassign", 10), ("unassign", 50)]
    for conv in convs:
        assert effects(simulator, conv) == [("move", ""), ("unassign", ""), ("note", "Parked")]


HAND_ON = (
    ROSTER.replace("{id: 2, name: Ben, calendar: day}", "{id: 2, name: Ben, calendar: day, enabled: false}")
    + """
rules:
  - id: return
    once: per_assignment
    when: {status: open, owner: [1, 2], owner_unresponsive: 15m}
    then:
      - assign: {pool: front, exclude_current: true}
      - note: "Handed on to {{ agent.name }}"
"""
)


def test_case1_a_deferred_hand_on_posts_no_note(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    loop, _ = leader(make_runtime, HAND_ON)
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    simulator.sim.reassign(conv, 1)
    tick(loop)
    for _ in range(3):
        simulator.clock.advance(timedelta(minutes=16))
        tick(loop)
    assert owner(simulator, conv) == 1  # nobody else available: the hand-on waits
    assert [e for e in effects(simulator, conv) if e[0] == "note"] == []


def test_case1_shipped_return_unanswered_gives_three_hops_each_with_its_note(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    """`return-unanswered` promises hand-ons after 15 business minutes, at most 3 hops,
    each followed (never preceded) by its note. The clock starts Monday 10:00 Berlin."""
    loop, _ = leader(make_runtime, SHIPPED_RULES)
    conv = simulator.sim.new_conversation(channel="webchat")["id"]
    simulator.clock.advance(1)  # the routing rule's assignment is a change the next poll sees
    tick(loop)
    first = owner(simulator, conv)
    assert first in (101, 102, 103)
    owners = []
    for _ in range(5):
        simulator.clock.advance(timedelta(minutes=15, seconds=1))
        tick(loop)
        owners.append(owner(simulator, conv))
    hops = [o for prev, o in zip([first, *owners], owners, strict=False) if o != prev]
    # Three hand-ons within the frontline, then the lead steps in (the SLA rules), as promised.
    assert [o in (101, 102, 103) for o in hops] == [True, True, True, False], owners
    assert owners[-1] == 201
    note = "Unanswered for 15 business minutes: handed on to the next free agent."
    seen = effects(simulator, conv)
    notes = [i for i, e in enumerate(seen) if e == ("note", note)]
    assigns = [i for i, e in enumerate(seen) if e[0] == "assign"]
    assert len(notes) == 3
    # Each note directly follows a hand-on (the first assignment is the routing rule's).
    for i in notes:
        assert seen[i - 1][0] == "assign" and i - 1 in assigns[1:]


# --- case 2: caps count firings, enforced at claim time --------------------------------------

CAPPED_HOPS = (
    ROSTER
    + """
rules:
  - id: return
    once: per_assignment
    max_per_conversation: 3
    when: {status: open, owner: [1, 2], owner_unresponsive: 15m}
    then:
      - assign: {pool: front, exclude_current: true}
      - note: "Handed on"
"""
)


def test_case2_max_per_conversation_counts_firings_not_actions(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    loop, _ = leader(make_runtime, CAPPED_HOPS)
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    simulator.sim.reassign(conv, 1)
    tick(loop)
    owners = []
    for _ in range(5):
        simulator.clock.advance(timedelta(minutes=15))
        tick(loop)
        owners.append(owner(simulator, conv))
    assert owners == [2, 1, 2, 2, 2]  # three hops, then the cap holds
    assert loop.runtime.ledger.count_for("return", conv) == 3


HOURLY = """
rules:
  - id: greet
    once: per_conversation
    max_per_hour: 3
    when: {status: open}
    then:
      - note: "Hello"
      - move: {pipeline: 1, stage: 12}
"""


def test_case2_max_per_hour_holds_within_one_tick_and_across_replicas(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    loop, _ = leader(make_runtime, HOURLY)
    replica = Loop(loop.runtime, loop.dispatcher)
    for _ in range(6):
        simulator.sim.new_conversation(channel="sms")
    tick(loop)
    replica.resync_once()
    simulator.clock.advance(timedelta(minutes=30))
    tick(loop)
    notes = [e for e in simulator.sim.audit_log() if e.method == "POST" and e.applied and _is_send(e)]
    assert len(notes) == 3
    simulator.clock.advance(timedelta(minutes=31))  # the first hour is over: three more
    loop.resync_once()
    notes = [e for e in simulator.sim.audit_log() if e.method == "POST" and e.applied and _is_send(e)]
    assert len(notes) == 6


# --- case 3: capacity holds whatever the queue depth ------------------------------------------

ROUTE_CAPACITY = (
    ROSTER.replace("calendar: day}", "calendar: day, capacity: 2}")
    + """
rules:
  - id: route
    once: per_assignment
    when: {status: open, owner: unset}
    then: [{assign: {pool: front}}]
"""
)


def test_case3_no_agent_exceeds_capacity_while_workers_lag(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    loop, queue = leader(make_runtime, ROUTE_CAPACITY)
    replica = Loop(loop.runtime, queue)
    queue.hold = True  # the workers are stopped: every claimed assignment stays queued
    convs = [simulator.sim.new_conversation(channel="sms")["id"] for _ in range(8)]
    tick(loop)
    for _ in range(3):  # the line's retries, a resync and a second replica, all before any work
        simulator.clock.advance(timedelta(seconds=61))
        tick(loop)
        loop.resync_once()
        replica.resync_once()
    queue.hold = False
    queue.drain()
    owners = [owner(simulator, c) for c in convs]
    assert sorted(o for o in owners if o is not None) == [1, 1, 2, 2], owners
    # Once an agent frees a place, the longest waiting conversation gets it.
    first_of_1 = next(c for c, o in zip(convs, owners, strict=True) if o == 1)
    simulator.sim.human_change(first_of_1, {"status": "closed"})
    simulator.clock.advance(timedelta(seconds=61))
    tick(loop)
    assert owner(simulator, convs[4]) == 1


# --- case 4: loops stopped ----------------------------------------------------------------------

DUO = """
agents:
  - {id: 101, name: Ana}
  - {id: 102, name: Ben}
pools:
  duo: {members: [101, 102]}
rules:
"""

BOUNCE = (
    DUO
    + """
  - id: bounce
    once: per_assignment
    when: {status: open, owner: set, channel: webchat}
    then: [{assign: {pool: duo, exclude_current: true}}]
"""
)

PING_PONG = """
rules:
  - id: forth
    once: per_stage_entry
    when: {status: open, stage: 11}
    then: [{move: {pipeline: 1, stage: 12}}]
  - id: back
    once: per_stage_entry
    when: {status: open, stage: 12}
    then: [{move: {pipeline: 1, stage: 11}}]
"""


@pytest.mark.parametrize("rules", [BOUNCE, PING_PONG], ids=["self-rearming hand-on", "stage ping-pong"])
def test_case4_the_static_check_refuses_the_issues_loops(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory, rules: str
) -> None:
    """Both validated on main and then changed the conversation on every poll."""
    with pytest.raises(RulesInvalid) as caught:
        make_runtime(rules)
    assert "(a loop)" in str(caught.value)
    assert validate_exit_code(rules) == 1


def validate_exit_code(rules: str) -> int:
    from tempfile import TemporaryDirectory

    from typer.testing import CliRunner

    from worker.cli import app

    with TemporaryDirectory() as folder:
        path = Path(folder) / "rules.yaml"
        path.write_text(rules)
        return CliRunner().invoke(app, ["validate", str(path)]).exit_code


# The same loop paced by a one-minute timer: the static check lets a timed rule pass (the
# return timer is one), so the run-time breaker has to stop it.
HIDDEN_BOUNCE = (
    DUO
    + """
  - id: bounce
    once: per_assignment
    when: {status: open, owner: set, assigned_for: 1m}
    then: [{assign: {pool: duo, exclude_current: true}}]
"""
)


def test_case4_the_breaker_takes_a_looping_conversation_out_of_automation(
    simulator: SimulatorHandle,
    make_runtime: RuntimeFactory,
    tmp_path: Path,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop, _ = leader(make_runtime, HIDDEN_BOUNCE)
    conv = simulator.sim.new_conversation(channel="webchat")["id"]
    other = simulator.sim.new_conversation(channel="webchat")["id"]
    simulator.sim.reassign(conv, 101)
    before = BREAKER_TRIPS._value.get()
    for _ in range(40):  # 20 minutes of polls every 30 s
        simulator.clock.advance(30)
        tick(loop)
    hops = [e for e in effects(simulator, conv) if e[0] == "assign"]
    # Defaults: more than 8 firings in 10 minutes trips it; then nothing for an hour.
    assert len(hops) == 9
    assert BREAKER_TRIPS._value.get() == before + 1
    assert any(f"conversation {conv}: loop breaker" in line for line in _deferred(loop, conv))
    simulator.sim.reassign(other, 101)  # another conversation is not affected
    for _ in range(3):
        simulator.clock.advance(30)
        tick(loop)
    assert owner(simulator, other) == 102
    if redis_url:  # explain reads the breaker from the worker's Redis
        at = simulator.clock.now().isoformat()
        text = _explain(simulator, tmp_path / "rules.yaml", redis_url, "-c", str(conv), "--at", at)
        assert "loop breaker: automation is paused on this conversation until" in text


def _deferred(loop: Loop, conversation_id: int) -> list[str]:
    record = loop.runtime.api.conversations.get(conversation_id)
    return loop.process([record], "check").deferred


# --- case 5: a rule or roster change acts within one poll interval ------------------------------

GREET_VIP = """
rules:
  - id: greet
    once: per_conversation
    when: {status: open, tags: vip}
    then: [{note: "Hello"}]
"""


def scheduled(make_runtime: RuntimeFactory, rules: str) -> tuple[SchedulerService, Loop]:
    """A scheduler service (its jobs run by hand below) that holds the leader lease."""
    runtime = make_runtime(rules)
    loop = Loop(runtime, Queue(runtime))
    service = SchedulerService(loop)
    assert service.contend()
    return service, loop


def scheduler_job(service: SchedulerService, name: str) -> None:
    """Run one of the scheduler's jobs now, as its interval would (the leader's gate included),
    after the lease job (the fake clock jumps further than the lease lives)."""
    service.contend()
    job = service._scheduler.get_job(name)
    assert job is not None, name
    job.func()


def test_case5_a_new_rule_reaches_existing_conversations_at_the_next_poll(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    service, loop = scheduled(make_runtime, GREET_VIP)
    convs = [simulator.sim.new_conversation(channel="sms")["id"] for _ in range(3)]
    simulator.clock.advance(5)
    report = loop.poll_once()  # what the poll job runs: seen and evaluated, no rule matches
    assert report.conversations == 3
    assert not [e for e in simulator.sim.audit_log() if e.method == "POST" and _is_send(e)]
    (tmp_path / "rules.yaml").write_text(GREET_VIP.replace("tags: vip", "channel: sms"))
    scheduler_job(service, "rules")
    simulator.clock.advance(loop.runtime.settings.poll_interval_s)
    scheduler_job(service, "poll")
    for conv in convs:
        assert [e for e in effects(simulator, conv) if e[0] == "note"] == [("note", "Hello")]


HAND_ON_OFFLINE = (
    ROSTER
    + """
rules:
  - id: hand-on
    once: per_assignment
    when: {status: open, owner: [1, 2], waiting_for_reply: 1m, owner_unavailable: {grace: 10m}}
    then: [{assign: {pool: front, exclude_current: true}}]
"""
)


def test_case5_an_agent_switched_off_hands_on_at_the_next_poll(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    service, loop = scheduled(make_runtime, HAND_ON_OFFLINE)
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    simulator.sim.reassign(conv, 1)
    simulator.clock.advance(timedelta(minutes=20))
    scheduler_job(service, "poll")
    scheduler_job(service, "timers")
    assert owner(simulator, conv) == 1  # on shift and switched on
    switched_off = HAND_ON_OFFLINE.replace(
        "{id: 1, name: Ana, calendar: day}", "{id: 1, name: Ana, enabled: false}"
    )
    (tmp_path / "rules.yaml").write_text(switched_off)
    scheduler_job(service, "rules")
    simulator.clock.advance(loop.runtime.settings.poll_interval_s)
    scheduler_job(service, "poll")
    assert owner(simulator, conv) == 2


def test_case1_a_worker_killed_between_two_actions_loses_neither(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    """Action 0 applied, then the worker dies before it queues action 1: the ledger's re-drive
    queues action 1 (it became due in the same script that recorded action 0)."""
    loop, queue = leader(make_runtime, ASSIGN_THEN_NOTE)
    queue.hold = True
    conv = simulator.sim.new_conversation(channel="webchat")["id"]
    tick(loop)
    (first,) = queue.queued
    queue.queued.clear()
    execute(loop.runtime, first)  # no enqueue: the process died right after the assignment
    assert effects(simulator, conv) == [("assign", "1")]
    simulator.clock.advance(timedelta(seconds=loop.runtime.ledger.redrive_after_s + 1))
    assert loop.redrive_once() == 1
    queue.hold = False
    queue.drain()
    assert effects(simulator, conv) == [("assign", "1"), ("note", "Assigned to Ana")]
    assert loop.redrive_once() == 0  # nothing left pending
