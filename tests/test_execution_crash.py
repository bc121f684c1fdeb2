"""A worker killed in the middle of a step never sends anything twice (fault tests).

The ledger records a step's outcomes in batches (one script for a bulk call's items,
one per send carrying its message's attribution). These tests kill the worker at
the ledger write, just before or just after it lands, then deliver the step again
and count what reached the simulator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime
from typing import Any, Literal

import pytest

from tests.e2e._exec_helpers import flush_redis, plan_and_claim, posts, runtime_on
from tests.support.redis_trips import round_trips
from worker.api.services import BULK_ACTIONS, SEND_PATHS
from worker.execution.execute import execute
from worker.runtime import Runtime
from worker.simulator.testing import SimulatorHandle
from worker.state.ledger import Finished, Ledger, State

WEBCHAT_SEND = SEND_PATHS["webchat"]

# A note does not make its rule false (notes are not replies): only the ledger and the
# read-back stand between a redelivered step and a second note.
NOTE = """
rules:
  - id: seen-note
    when: {status: open}
    then:
      - note: "Seen by the bot."
"""

ASSIGN_NEW = """
rules:
  - id: assign-new
    when: {status: open, owner: unset}
    then:
      - assign: 103
"""


class Killed(BaseException):
    """The worker process dies here (nothing in the executor may catch it)."""


class KillingLedger(Ledger):
    """The real ledger, except that the worker dies at the `at`-th finish: `before` its
    write reaches Redis (the effect was applied, its outcome is lost) or `after` it."""

    def __init__(self, runtime: Runtime, at: int, when: Literal["before", "after"]) -> None:
        ledger = runtime.ledger
        super().__init__(
            runtime.redis, runtime.clock, ttl_s=ledger.ttl_s, redrive_after_s=ledger.redrive_after_s
        )
        self.finishes = 0
        self._at = at
        self._when = when

    def finish_items(
        self,
        outcomes: Sequence[tuple[str, State, dict[str, Any]]],
        now: datetime | None = None,
        *,
        sent: Mapping[str, tuple[int, str]] | None = None,
    ) -> list[Finished]:
        self.finishes += 1
        if self.finishes == self._at and self._when == "before":
            raise Killed
        done = super().finish_items(outcomes, now, sent=sent)
        if self.finishes == self._at:
            raise Killed
        return done


Make = Callable[[str], Runtime]


@pytest.fixture
def make(simulator: SimulatorHandle, redis_url: str) -> Iterator[Make]:
    flush_redis(redis_url)
    with ExitStack() as stack:
        yield lambda rules: stack.enter_context(runtime_on(simulator, redis_url, rules))


def _notes(simulator: SimulatorHandle, conversation_id: int) -> list[str]:
    return [m["message_text"] for m in simulator.sim.messages(conversation_id) if m["message_type"] == "note"]


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_worker_killed_between_two_sends_never_sends_the_first_again(
    simulator: SimulatorHandle, make: Make, when: Literal["before", "after"]
) -> None:
    runtime = make(NOTE)
    ids = [int(simulator.sim.new_conversation(channel="webchat")["id"]) for _ in range(3)]
    (step,) = plan_and_claim(runtime, ids)
    assert len(step.items) == 3
    # Killed at the second send's ledger write: before it, the second note is sent but not
    # recorded; after it, both are recorded and the third was never started.
    with pytest.raises(Killed):
        execute(replace(runtime, ledger=KillingLedger(runtime, at=2, when=when)), step)
    assert len(posts(simulator, WEBCHAT_SEND)) == 2
    simulator.sim.idempotency.clear()  # the ledger and the read-back, not the server's replay
    execute(runtime, step)
    assert [_notes(simulator, cid) for cid in ids] == [["Seen by the bot."]] * 3
    assert len(posts(simulator, WEBCHAT_SEND)) == 3  # each note once: nothing sent twice
    entries = [runtime.ledger.get(item.key) for item in step.items]
    assert all(e is not None and e.state == "done" for e in entries), entries
    second = entries[1]
    assert second is not None and second.outcome.get("reconciled") is (when == "before" or None)


def test_a_worker_killed_before_a_bulk_calls_outcome_is_written_never_calls_again(
    simulator: SimulatorHandle, make: Make
) -> None:
    runtime = make(ASSIGN_NEW)
    ids = [int(simulator.sim.new_conversation(channel="sms")["id"]) for _ in range(50)]
    (step,) = plan_and_claim(runtime, ids)
    with pytest.raises(Killed):  # the call applied all 50; the one ledger write never landed
        execute(replace(runtime, ledger=KillingLedger(runtime, at=1, when="before")), step)
    keys = [item.key for item in step.items]
    assert all(e is not None and e.state == "pending" for e in map(runtime.ledger.get, keys))
    simulator.sim.idempotency.clear()
    execute(runtime, step)
    assert len(posts(simulator, BULK_ACTIONS)) == 1
    entries = [runtime.ledger.get(key) for key in keys]
    assert all(e is not None and e.state == "done" and e.outcome.get("already") for e in entries)


def test_a_send_costs_one_redis_round_trip(
    simulator: SimulatorHandle, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outcome and the message's attribution are one write, durable before the next send."""
    runtime = make(NOTE)
    warm, one, six = (
        [int(simulator.sim.new_conversation(channel="webchat")["id"]) for _ in range(n)] for n in (1, 1, 6)
    )
    execute(runtime, plan_and_claim(runtime, warm)[0])  # scripts loaded once per process
    (step_one,), (step_six,) = plan_and_claim(runtime, one), plan_and_claim(runtime, six)
    trips = round_trips(monkeypatch)
    execute(runtime, step_one)
    for_one = _writes(trips)
    execute(runtime, step_six)
    assert len(posts(simulator, WEBCHAT_SEND)) == 8
    assert _writes(trips) - 2 * for_one == 5, trips  # five more sends, five more round trips


def _writes(trips: list[str]) -> int:
    # Leaves out the API gate's shared-pause check, a GET before every request (worker/api).
    return sum(1 for trip in trips if trip != "GET")
