"""Issue 17.3: a conversation whose snapshot read failed is read again on a following
tick (it stays due until read), not only at the next full resync; how long it stayed
unread is a metric."""

from __future__ import annotations

from tests.e2e.conftest import RuntimeFactory
from tests.support.dispatchers import Inline
from tests.support.leading import lead
from worker.metrics import REGISTRY
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle

REFUND = """
rules:
  - id: refund-note
    when: {status: open, message_text: refund}
    then: [{note: "refund asked"}]
"""
SMS_MESSAGES = "/conversation-messages-sms"


def _gauge(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    return value if value is not None else 0.0


def test_a_conversation_whose_read_failed_is_read_again_on_a_following_tick(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    runtime = make_runtime(REFUND, read_retries=1)
    loop = Loop(runtime, Inline(runtime))
    lead(loop, 3600)
    conv = simulator.sim.new_conversation(channel="sms", text="I want a refund")["id"]
    simulator.sim.set_faults(error_rate=1.0, paths=[SMS_MESSAGES])
    loop.poll_once()  # the record is seen, its messages answer 500s: left out of this tick
    assert simulator.sim.messages(conv)[-1]["message_type"] != "note"
    simulator.clock.advance(30)
    loop.poll_once()
    loop.pump_once()  # still failing: still unread, waiting longer
    oldest_while_failing = _gauge("inboxpilot_unread_oldest_seconds")
    unread_before = _gauge("inboxpilot_unread_seconds_count")
    simulator.sim.set_faults(error_rate=0.0)
    simulator.clock.advance(60)  # the API is back; nothing new changed in the conversation
    loop.poll_once()
    loop.pump_once()
    notes = [m for m in simulator.sim.messages(conv) if m["message_type"] == "note"]
    assert [m["message_text"] for m in notes] == ["refund asked"]
    assert oldest_while_failing >= 30
    assert _gauge("inboxpilot_unread_oldest_seconds") == 0
    assert _gauge("inboxpilot_unread_seconds_count") == unread_before + 1
