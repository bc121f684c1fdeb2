"""Issue 17.1: every attempt acts on a fresh re-check, close to the call.

Against the (strict) simulator on a fake clock: a retried note whose situation
moved on is not sent, the next situation's note is sent on time rather than
"reconciled" against the old one, and a bulk call leaves out a conversation
whose customer wrote between its re-check and the call.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest

from tests.e2e.conftest import RuntimeFactory
from tests.support.dispatchers import Collector
from worker.api.errors import ApiError
from worker.api.services import SEND_PATHS
from worker.execution.execute import execute
from worker.rules.firing import Step
from worker.runtime import Runtime
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle

SMS_SEND = SEND_PATHS["sms"]

ESCALATE = """
rules:
  - id: escalate
    once: per_inbound_message
    when: {status: open, waiting_for_reply: 2m}
    then:
      - move: {pipeline: 1, stage: 14}
      - note: "escalated: customer waiting"
"""


def _steps(runtime: Runtime) -> list[Step]:
    collector = Collector()
    loop = Loop(runtime, collector)
    loop.poll_once()
    loop.pump_once()
    return collector.steps


def _notes(simulator: SimulatorHandle, conv: int) -> list[dict[str, object]]:
    return [m for m in simulator.sim.messages(conv) if m["message_type"] == "note"]


def test_a_retried_note_of_a_situation_that_moved_on_is_not_sent_and_the_next_one_is(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    runtime = make_runtime(ESCALATE)
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    simulator.clock.advance(timedelta(minutes=2, seconds=1))
    (bulk,) = _steps(runtime)  # a firing's actions run in order: the move first
    queued: list[Step] = []
    execute(runtime, bulk, queued.append)  # the move is applied: the note is queued next
    (note,) = queued
    simulator.sim.set_faults(error_rate=1.0, paths=[SMS_SEND])
    with pytest.raises(ApiError):
        execute(runtime, note)  # 500: the note stays pending, dramatiq would retry it
    simulator.clock.advance(20)
    second = simulator.sim.customer_message(conv, "anyone there?")["created_at"]
    simulator.sim.set_faults(error_rate=0.0)
    simulator.clock.advance(11)
    execute(runtime, note)  # the retry: the customer wrote again, this situation is over
    assert _notes(simulator, conv) == []
    entry = runtime.ledger.get(note.items[0].key)
    assert entry is not None and entry.state == "done"
    assert entry.outcome["result"] == "skipped" and "situation moved on" in entry.outcome["reason"]
    # The second wait escalates once it is 2 minutes long, with its own note.
    simulator.clock.advance(timedelta(minutes=2))
    steps = _steps(runtime)
    while steps:
        execute(runtime, steps.pop(0), steps.append)
    (sent,) = _notes(simulator, conv)
    assert sent["created_at"] >= second + timedelta(minutes=2)


def test_a_late_send_of_one_situation_never_satisfies_the_next(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    """The customer writes between a note's re-check and its send: the note still goes out
    (its re-check is 0.2 s old, within the budget), and the next situation's note, the same
    text, does not count it as its own."""
    transport = ChangeAfterRead()
    runtime = make_runtime(
        "rules:\n  - id: ack\n    once: per_inbound_message\n    when: {status: open}\n"
        '    then: [{note: "seen"}]\n',
        transport=transport,
    )
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    (first,) = _steps(runtime)

    def customer_writes_again() -> None:
        simulator.clock.advance(0.2)
        simulator.sim.customer_message(conv, "again")

    transport.arm(customer_writes_again, lambda r: r.url.path.startswith("/conversation-messages-"))
    execute(runtime, first)
    for step in _steps(runtime):
        execute(runtime, step)
    assert [m["message_text"] for m in _notes(simulator, conv)] == ["seen", "seen"]


class ChangeAfterRead(httpx.HTTPTransport):
    """Runs an action once, right after the first read that `when` picks has answered."""

    def __init__(self) -> None:
        super().__init__()
        self._then: Callable[[], None] | None = None
        self._when: Callable[[httpx.Request], bool] = lambda _: False

    def arm(self, then: Callable[[], None], when: Callable[[httpx.Request], bool]) -> None:
        self._then, self._when = then, when

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if self._then is not None and request.method == "GET" and self._when(request):
            then, self._then = self._then, None
            response.read()
            then()
        return response


def test_a_bulk_call_leaves_out_a_conversation_whose_customer_wrote_after_its_recheck(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    transport = ChangeAfterRead()
    runtime = make_runtime(
        "rules:\n  - id: park\n    once: per_inbound_message\n"
        "    when: {status: open, waiting_for_reply: 5m}\n    then: [{move: {pipeline: 1, stage: 14}}]\n",
        transport=transport,
    )
    convs = [simulator.sim.new_conversation(channel="sms")["id"] for _ in range(3)]
    simulator.clock.advance(timedelta(minutes=5, seconds=1))
    (step,) = _steps(runtime)
    assert len(step.items) == 3

    def customer_writes_while_we_check() -> None:
        simulator.clock.advance(2)  # a slow re-check (rate limit, slow reads)
        simulator.sim.customer_message(convs[1], "still here")

    transport.arm(
        customer_writes_while_we_check,
        lambda r: r.url.path == "/conversations" and "id%5B%24in%5D" in str(r.url),
    )
    execute(runtime, step)
    stages = [simulator.sim.conversation(c)["pipeline_stage_id"] for c in convs]
    assert stages[0] == 14 and stages[2] == 14
    assert stages[1] != 14  # the customer wrote 2 s before the call: the rule no longer held
    entry = runtime.ledger.get(step.items[1].key)
    assert entry is not None and entry.outcome.get("result") == "skipped"
    assert _staleness_count("move") >= 1  # how old the re-check was when the call left


def _staleness_count(action: str) -> float:
    from worker.metrics import ACTION_STALENESS_S

    for metric in ACTION_STALENESS_S.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels.get("action") == action:
                return sample.value
    return 0.0


QUIET_TAG = """
rules:
  - id: quiet
    once: per_conversation
    when: {status: open, silent_for: 1h}
    then:
      - tag: quiet
"""


def test_a_tag_is_not_written_once_the_customer_wrote_after_its_recheck(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    """A slow tags step: the customer writes 2 s after the re-check, before the PATCH; the
    re-read right before the write sees it and the rule, checked again, no longer holds."""
    transport = ChangeAfterRead()
    runtime = make_runtime(QUIET_TAG, transport=transport)
    convs = [simulator.sim.new_conversation(channel="sms")["id"] for _ in range(2)]
    for conv in convs:
        simulator.sim.team_reply(conv, "anything else?")
    simulator.clock.advance(timedelta(hours=1, seconds=1))
    (step,) = _steps(runtime)
    assert len(step.items) == 2

    def customer_writes_while_we_check() -> None:
        simulator.clock.advance(2)  # a slow re-check (rate limit, slow reads)
        simulator.sim.customer_message(convs[1], "one more thing")

    transport.arm(
        customer_writes_while_we_check,
        lambda r: r.url.path == "/conversations" and "id%5B%24in%5D" in str(r.url),
    )
    before = _staleness_count("tags")
    execute(runtime, step)
    tags = [simulator.sim.conversation(c)["tags"] for c in convs]
    assert "quiet" in tags[0]
    assert "quiet" not in tags[1]  # the customer wrote before the call: the rule no longer held
    entry = runtime.ledger.get(step.items[1].key)
    assert entry is not None and entry.outcome.get("result") == "skipped"
    assert _staleness_count("tags") == before + 1  # how old the re-check was when the PATCH left
