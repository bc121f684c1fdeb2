"""Issue 17.6: the worker works on the documented record (a strict simulator: no
`assigned_at`, `stage_entered_at`, `initiated_by`). Owner and stage times are derived
from the worker's own observations, kept in Redis across restarts."""

from __future__ import annotations

from datetime import timedelta

from tests.e2e.conftest import RuntimeFactory
from tests.support.dispatchers import Inline
from worker.runtime import Runtime
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle


def _tick(runtime: Runtime) -> None:
    loop = Loop(runtime, Inline(runtime))
    loop.poll_once()
    loop.pump_once()


def _notes(simulator: SimulatorHandle, conv: int, text: str) -> int:
    return sum(
        1 for m in simulator.sim.messages(conv) if m["message_type"] == "note" and m["message_text"] == text
    )


def test_the_simulator_is_strict_here(simulator: SimulatorHandle) -> None:
    assert simulator.sim.strict


ASSIGNED_FOR = """
rules:
  - id: nudge-owner
    once: per_assignment
    when: {status: open, owner: set, assigned_for: 10m}
    then: [{note: "still yours"}]
"""


def test_assigned_for_counts_from_the_observed_assignment_across_a_restart(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    first = make_runtime(ASSIGNED_FOR)
    _tick(first)
    simulator.clock.advance(60)
    simulator.sim.reassign(conv, 7)  # a person assigns it at 09:01
    _tick(first)
    first.close()
    simulator.clock.advance(timedelta(minutes=8))
    restarted = make_runtime(ASSIGNED_FOR)  # same Redis: the observation survives
    _tick(restarted)
    assert _notes(simulator, conv, "still yours") == 0  # 8 min: not yet
    simulator.clock.advance(timedelta(minutes=2, seconds=1))
    _tick(restarted)
    _tick(restarted)
    assert _notes(simulator, conv, "still yours") == 1
    # A new owner is a new assignment: ten more minutes, then one more note.
    simulator.clock.advance(30)
    simulator.sim.reassign(conv, 8)
    _tick(restarted)
    simulator.clock.advance(timedelta(minutes=10, seconds=1))
    _tick(restarted)
    _tick(restarted)
    assert _notes(simulator, conv, "still yours") == 2


STAGE = """
rules:
  - id: stage-welcome
    once: per_stage_entry
    when: {status: open, stage: 12, in_stage_for: 5m}
    then: [{note: "in stage 12"}]
"""


def test_a_stage_re_entry_is_a_new_situation(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    runtime = make_runtime(STAGE)
    _tick(runtime)
    for round_ in (1, 2):
        simulator.sim.human_change(conv, {"pipeline_id": 1, "pipeline_stage_id": 12})
        _tick(runtime)
        simulator.clock.advance(timedelta(minutes=5, seconds=1))
        _tick(runtime)
        _tick(runtime)
        assert _notes(simulator, conv, "in stage 12") == round_
        simulator.sim.human_change(conv, {"pipeline_id": 1, "pipeline_stage_id": 13})
        _tick(runtime)
        simulator.clock.advance(60)
