"""Redis lost its data: the ledger forgot every firing, yet nothing is sent twice.

The worker reads a conversation's messages back before *every* reply or note
(not only on retries), from the start of the firing's situation. These tests
wipe Redis after a send and make the API forget its idempotency keys too (an
API that does not honour them), then run the same firing again as attempt 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta

import pytest

from tests.e2e._exec_helpers import applied_posts, flush_redis, plan_and_claim, runtime_on
from worker.api.services import SEND_PATHS
from worker.execution.execute import execute
from worker.rules.firing import Step
from worker.runtime import Runtime
from worker.simulator.testing import SimulatorHandle

WEBCHAT_SEND = SEND_PATHS["webchat"]

ACK_AND_NOTE = """
rules:
  - id: ack
    once: per_inbound_message
    when: {status: open}
    then:
      - reply: "Thanks, we got your message."
  - id: triage
    when: {status: open}
    then:
      - note: "Triage {{ conversation.id }}"
"""


@pytest.fixture
def runtime(simulator: SimulatorHandle, redis_url: str) -> Iterator[Runtime]:
    flush_redis(redis_url)
    with ExitStack() as stack:
        yield stack.enter_context(runtime_on(simulator, redis_url, ACK_AND_NOTE))


def lose_everything(simulator: SimulatorHandle, redis_url: str) -> None:
    """Redis restarts empty and the API has forgotten every Idempotency-Key."""
    flush_redis(redis_url)
    simulator.sim.idempotency.clear()


def run_all(runtime: Runtime, conversation_id: int) -> list[Step]:
    """Plan, claim and execute every firing of the conversation, as scheduler and actor would."""
    steps = plan_and_claim(runtime, [conversation_id])
    for step in steps:
        execute(runtime, step)
    return steps


def test_sends_are_not_repeated_after_redis_lost_its_data(
    simulator: SimulatorHandle, runtime: Runtime, redis_url: str
) -> None:
    conv = int(simulator.sim.new_conversation(channel="webchat")["id"])
    assert len(run_all(runtime, conv)) == 2
    assert len(applied_posts(simulator, WEBCHAT_SEND)) == 2

    lose_everything(simulator, redis_url)
    again = run_all(runtime, conv)  # claimed again as attempt 1: the ledger is empty

    assert len(again) == 2
    assert len(applied_posts(simulator, WEBCHAT_SEND)) == 2
    for item in (item for step in again for item in step.items):
        entry = runtime.ledger.get(item.key)
        assert entry is not None and entry.state == "done"
        assert entry.outcome.get("reconciled") is True, entry


def test_a_new_customer_message_is_answered_again(
    simulator: SimulatorHandle, runtime: Runtime, redis_url: str
) -> None:
    """The read-back looks only at messages since the situation began: the same text
    sent for an earlier customer message does not count."""
    conv = int(simulator.sim.new_conversation(channel="webchat")["id"])
    run_all(runtime, conv)
    simulator.clock.advance(timedelta(minutes=5))
    simulator.sim.customer_message(conv, "One more thing")
    lose_everything(simulator, redis_url)

    run_all(runtime, conv)

    replies = [e for e in applied_posts(simulator, WEBCHAT_SEND) if e.body["message_type"] == "text"]
    notes = [e for e in applied_posts(simulator, WEBCHAT_SEND) if e.body["message_type"] == "note"]
    assert len(replies) == 2  # one per customer message
    assert len(notes) == 1  # per conversation: never again
