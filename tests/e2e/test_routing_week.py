"""A simulated week of arrivals through the real loop (poll, due-timers, ledger, Router in
Redis, inline execution against the simulator), checked against the routing properties:
round-robin fairness, capacity, nobody off shift gets work, oldest first, and a human's
reassignment never undone."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from tests.e2e.conftest import RuntimeFactory
from tests.scenarios.routing_properties import (
    Assignment,
    TickView,
    bot_assignments,
    capacity_kept,
    human_changes_kept,
    oldest_first,
    on_shift_only,
    open_loads,
    round_robin_fair,
    waiting_unassigned,
)
from tests.support.dispatchers import Inline
from tests.support.leading import lead
from worker.api.models import Conversation
from worker.rules.routing import waiting_since
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle

# The busy run re-reads a long waiting line every minute: 2 days keep CI quick; the whole
# week passes too (ROUTING_BUSY_DAYS=7, about 3 minutes).
DAYS = 7
BUSY_DAYS = int(os.environ.get("ROUTING_BUSY_DAYS", "2"))
LEAD = 9

WEEK = """
calendars:
  shift:
    timezone: UTC
    hours: {mon: ["09:00-17:00"], tue: ["09:00-17:00"], wed: ["09:00-12:00", "13:00-17:00"],
            thu: ["09:00-17:00"], fri: ["09:00-17:00"], sat: ["10:00-14:00"]}
agents:
  - {id: 1, capacity: CAP, calendar: shift}
  - {id: 2, capacity: CAP, calendar: shift}
  - {id: 3, capacity: CAP, calendar: shift}
  - {id: 9, name: Lead}
pools:
  front: {members: [1, 2, 3], strategy: round_robin}
rules:
  - id: route
    once: per_assignment
    when: {status: open, owner: unset}
    then: [{assign: {pool: front}}]
"""


@dataclass
class Week:
    ticks: list[TickView] = field(default_factory=list)
    loads: list[tuple[object, dict[int, int]]] = field(default_factory=list)
    humans: list[Assignment] = field(default_factory=list)


def _play(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory, rules: str, *, tick: timedelta, seed: int,
    arrival_p: float, close_p: float, human_p: float, days: int = DAYS,
) -> tuple[Loop, Week]:  # fmt: skip
    runtime = make_runtime(rules)
    loop = Loop(runtime, Inline(runtime))
    lead(loop, 10**9)
    rng, sim, week = random.Random(seed), simulator.sim, Week()
    end = simulator.clock.now() + timedelta(days=days)
    while simulator.clock.now() < end:
        simulator.clock.advance(tick)
        _people(sim, rng, week, arrival_p, close_p, human_p)
        seen = len(sim.audit_log())
        loop.poll_once()
        loop.pump_once()
        now = simulator.clock.now()
        served = bot_assignments(sim.audit_log(seen))
        view = TickView(now, waiting=waiting_unassigned(sim))
        view.assigned = {a.conversation_id: _since(sim, a.conversation_id) for a in served}
        week.ticks.append(view)
        week.loads.append((now, open_loads(sim)))
    return loop, week


def _people(
    sim: object, rng: random.Random, week: Week, arrival_p: float, close_p: float, human_p: float
) -> None:
    from worker.simulator.simulator import Simulator

    assert isinstance(sim, Simulator)
    if rng.random() < arrival_p:
        sim.new_conversation(channel=rng.choice(["sms", "webchat"]))
    with sim.lock:
        owned = [
            (c["id"], c["owner_id"]) for c in sim.store.conversations.candidates({}) if c["status"] == "open"
        ]
    for conversation_id, owner in sorted(owned):
        if owner is None or owner == LEAD:
            continue
        roll = rng.random()
        if roll < close_p:
            sim.human_change(conversation_id, {"status": "closed"})
        elif roll < close_p + human_p:
            sim.reassign(conversation_id, LEAD)
            now = sim.clock.now()
            week.humans.append(Assignment(now, conversation_id, LEAD, "human", owner))


def _since(sim: object, conversation_id: int) -> object:
    from worker.simulator.simulator import Simulator

    assert isinstance(sim, Simulator)
    return waiting_since(Conversation.model_validate(sim.conversation(conversation_id)))


@pytest.mark.slow
def test_a_week_of_round_robin_is_fair(simulator: SimulatorHandle, make_runtime: RuntimeFactory) -> None:
    """No capacity pressure: every agent is eligible whenever anyone is, so turns differ by <= 1."""
    loop, week = _play(
        simulator, make_runtime, WEEK.replace("CAP", "1000"),
        tick=timedelta(minutes=10), seed=11, arrival_p=0.5, close_p=0.1, human_p=0.01,
    )  # fmt: skip
    ruleset = loop.runtime.rulebook.ruleset
    assigned = bot_assignments(simulator.sim.audit_log())
    assert len(assigned) > 300
    assert round_robin_fair(assigned, [1, 2, 3]) == []
    assert on_shift_only(assigned, ruleset.roster) == []
    assert oldest_first(week.ticks) == []
    assert human_changes_kept([*assigned, *week.humans]) == []


@pytest.mark.slow
def test_a_busy_week_keeps_capacity_shifts_order_and_humans(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    """Capacity 2 and more arrivals than the team can take: conversations wait in line."""
    loop, week = _play(
        simulator, make_runtime, WEEK.replace("CAP", "2"),
        tick=timedelta(minutes=5), seed=5, arrival_p=0.6, close_p=0.08, human_p=0.01, days=BUSY_DAYS,
    )  # fmt: skip
    roster = loop.runtime.rulebook.ruleset.roster
    assigned = bot_assignments(simulator.sim.audit_log())
    assert len(assigned) > 30 * BUSY_DAYS
    assert sum(1 for t in week.ticks if t.waiting and t.assigned) > 5 * BUSY_DAYS  # the line really moved
    assert week.humans, "the scenario should include human reassignments"
    assert capacity_kept(week.loads, roster) == []  # type: ignore[arg-type]
    assert on_shift_only(assigned, roster) == []
    assert oldest_first(week.ticks) == []
    assert human_changes_kept([*assigned, *week.humans]) == []
