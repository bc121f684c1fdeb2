"""Issue 17.2: a backlog is safe. Workers stopped for hours (fake clock) behind a queue
of 10,000 messages: the ledger's re-drive sends none of them again (they are queued,
not lost), fails none, and once the workers start the backlog drains with 0 lost and
0 duplicates. Only a message that really left the broker is re-driven, and an item
out of re-drives is failed only after reading back that its effect is not there."""

from __future__ import annotations

import os
from collections import Counter
from datetime import timedelta
from pathlib import Path

import fakeredis
import pytest

from tests.e2e._app_helpers import app_on, leader_loop, wait_for
from tests.support.dispatchers import TEST_POLL_TIMEOUT_MS
from worker.api.services import SEND_PATHS
from worker.app import App
from worker.queue.actors import QUEUE
from worker.rules.firing import Step
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle
from worker.state.ledger import REDRIVE_KEY, read_audit
from worker.state.redis_conn import embedded_server

# The 10,000 is `BACKLOG_MESSAGES=10000` (bench/RESULTS.md); the suite drains 2,000.
BACKLOG = int(os.environ.get("BACKLOG_MESSAGES", "2000"))
# Notes with the same action share a queued step of up to 50 items (worker/scheduling/planning.py).
QUEUED_STEPS = -(-BACKLOG // 50)
NOTE = """
rules:
  - id: hello
    when: {status: open}
    then: [{note: "hello"}]
"""
SMS_SEND = SEND_PATHS["sms"]
QUEUED = f"dramatiq:{QUEUE}.msgs"
REDRIVE_AFTER_S = 30.0


@pytest.fixture(autouse=True)
def _empty_embedded_redis() -> None:
    """`app_on` uses the process's embedded Redis: start each test on an empty one."""
    fakeredis.FakeRedis(server=embedded_server()).flushall()


def _redrive_all(loop: Loop) -> int:
    """Run the re-drive job until it has looked at every due claim; the re-driven count."""
    sent = 0
    for _ in range(BACKLOG // 100 + 2):
        sent += loop.redrive_once()
    return sent


def _claim_backlog(simulator: SimulatorHandle, built: App) -> Loop:
    for _ in range(BACKLOG):
        simulator.sim.new_conversation(channel="sms", text="hi")
    loop = leader_loop(built)
    while loop.poll_once().steps:
        pass
    return loop


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_backlog_waits_hours_then_drains_with_nothing_lost_or_repeated(
    simulator: SimulatorHandle, tmp_path: Path
) -> None:
    with app_on(simulator, tmp_path, NOTE, redrive_after_s=REDRIVE_AFTER_S) as built:
        loop = _claim_backlog(simulator, built)
        redis = built.runtime.redis
        assert redis.hlen(QUEUED) == QUEUED_STEPS
        # The workers are down for 6 hours; the scheduler's re-drive job keeps running.
        redriven = 0
        for _ in range(12):
            simulator.clock.advance(timedelta(minutes=30))
            redriven += _redrive_all(loop)
        assert redriven == 0  # queued behind others is not lost
        assert not [e for e in read_audit(redis) if e["state"] == "failed"]
        assert redis.hlen(QUEUED) == QUEUED_STEPS
        worker = built.worker(8, poll_timeout_ms=TEST_POLL_TIMEOUT_MS)
        worker.start()
        try:
            wait_for(lambda: redis.zcard(REDRIVE_KEY) == 0 and redis.hlen(QUEUED) == 0, timeout_s=800)
        finally:
            worker.stop()
    sends = Counter(
        e.body["conversation_id"] for e in simulator.sim.audit_log() if e.path == SMS_SEND and e.applied
    )
    assert len(sends) == BACKLOG  # 0 lost
    assert max(sends.values()) == 1  # 0 duplicates


def test_only_a_message_that_left_the_broker_is_redriven(simulator: SimulatorHandle, tmp_path: Path) -> None:
    with app_on(simulator, tmp_path, NOTE, redrive_after_s=REDRIVE_AFTER_S) as built:
        loop = leader_loop(built)
        conversations, steps = [], []
        for _ in range(3):  # one poll each: three queued messages (one poll's notes share a step)
            conversations.append(simulator.sim.new_conversation(channel="sms", text="hi")["id"])
            simulator.clock.advance(1)
            steps += loop.poll_once().steps
        assert len(steps) == 3
        redis = built.runtime.redis
        lost = steps[0].items[0]
        ref = redis.hget(f"inboxpilot:ledger:{lost.key}", "msg")
        assert ref is not None and redis.hdel(QUEUED, ref) == 1  # the broker lost this one
        simulator.clock.advance(REDRIVE_AFTER_S + 1)
        collected: list[Step] = []
        loop.dispatcher = _Keep(collected)  # type: ignore[assignment]
        assert loop.redrive_once() == 1
        assert [s.items[0].key for s in collected] == [lost.key]
        assert len(conversations) == 3


def test_out_of_redrives_an_applied_item_is_done_not_failed(
    simulator: SimulatorHandle, tmp_path: Path
) -> None:
    """Its message keeps getting lost; meanwhile the note was sent: the verdict reads it back."""
    from worker.execution.execute import execute

    with app_on(simulator, tmp_path, NOTE, redrive_after_s=REDRIVE_AFTER_S) as built:
        simulator.sim.new_conversation(channel="sms", text="hi")
        loop = leader_loop(built)
        (step,) = loop.poll_once().steps
        ledger, redis = built.runtime.ledger, built.runtime.redis
        key = step.items[0].key
        collected: list[Step] = []
        loop.dispatcher = _Keep(collected)  # type: ignore[assignment]
        redis.delete(QUEUED)
        for _ in range(ledger.max_redrives):  # every re-driven message is lost too
            simulator.clock.advance(REDRIVE_AFTER_S + 1)
            assert loop.redrive_once() == 1
        # An earlier attempt had sent the note after all (its outcome was never recorded).
        execute_send_without_ledger(built)
        simulator.clock.advance(REDRIVE_AFTER_S + 1)
        assert loop.redrive_once() == 1  # the verdict delivery
        execute(built.runtime, collected[-1])
        entry = ledger.get(key)
        assert entry is not None and entry.state == "done", entry
        sends = [e for e in simulator.sim.audit_log() if e.path == SMS_SEND and e.applied]
        assert len(sends) == 1


def test_out_of_redrives_an_item_not_applied_is_failed_without_acting(
    simulator: SimulatorHandle, tmp_path: Path
) -> None:
    from worker.execution.execute import execute

    with app_on(simulator, tmp_path, NOTE, redrive_after_s=REDRIVE_AFTER_S) as built:
        simulator.sim.new_conversation(channel="sms", text="hi")
        loop = leader_loop(built)
        (step,) = loop.poll_once().steps
        ledger, redis = built.runtime.ledger, built.runtime.redis
        collected: list[Step] = []
        loop.dispatcher = _Keep(collected)  # type: ignore[assignment]
        redis.delete(QUEUED)
        for _ in range(ledger.max_redrives + 1):
            simulator.clock.advance(REDRIVE_AFTER_S + 1)
            assert loop.redrive_once() == 1
        execute(built.runtime, collected[-1])
        entry = ledger.get(step.items[0].key)
        assert entry is not None and entry.state == "failed" and entry.reason.startswith("redrive_limit")
        assert not [e for e in simulator.sim.audit_log() if e.path == SMS_SEND and e.applied]


AUTOMATE = """
rules:
  - id: automate
    when: {status: open}
    then: [{run_automation: 42}]
"""
EXECUTIONS = "/automations-executions"


def _verdict_delivery(simulator: SimulatorHandle, built: App, ran_meanwhile: bool) -> str:
    """An automation item whose messages are all lost until its verdict delivery, executed;
    `ran_meanwhile`: an earlier attempt had run the automation (its outcome never recorded)."""
    from worker.execution.execute import execute

    simulator.sim.new_conversation(channel="sms", text="hi")
    loop = leader_loop(built)
    (step,) = loop.poll_once().steps
    collected: list[Step] = []
    loop.dispatcher = _Keep(collected)  # type: ignore[assignment]
    built.runtime.redis.delete(QUEUED)
    for _ in range(built.runtime.ledger.max_redrives):
        simulator.clock.advance(REDRIVE_AFTER_S + 1)
        assert loop.redrive_once() == 1
    if ran_meanwhile:
        built.runtime.api.automations.run(42, 1)
    simulator.clock.advance(REDRIVE_AFTER_S + 1)
    assert loop.redrive_once() == 1  # the verdict delivery
    execute(built.runtime, collected[-1])
    return step.items[0].key


def test_out_of_redrives_an_automation_that_ran_is_done_not_failed(
    simulator: SimulatorHandle, tmp_path: Path
) -> None:
    """The verdict reads `/automations-executions` back: the run is there, so not failed."""
    with app_on(simulator, tmp_path, AUTOMATE, redrive_after_s=REDRIVE_AFTER_S) as built:
        key = _verdict_delivery(simulator, built, ran_meanwhile=True)
        entry = built.runtime.ledger.get(key)
        assert entry is not None and entry.state == "done", entry
        assert entry.outcome.get("already") is True
        runs = [e for e in simulator.sim.audit_log() if e.path == EXECUTIONS and e.applied]
        assert len(runs) == 1  # not run again


def test_out_of_redrives_an_automation_that_never_ran_is_failed_without_running(
    simulator: SimulatorHandle, tmp_path: Path
) -> None:
    with app_on(simulator, tmp_path, AUTOMATE, redrive_after_s=REDRIVE_AFTER_S) as built:
        key = _verdict_delivery(simulator, built, ran_meanwhile=False)
        entry = built.runtime.ledger.get(key)
        assert entry is not None and entry.state == "failed" and entry.reason.startswith("redrive_limit")
        assert not [e for e in simulator.sim.audit_log() if e.path == EXECUTIONS]


def execute_send_without_ledger(built: App) -> None:
    """The note as an earlier, unrecorded attempt sent it."""
    conversation = built.runtime.api.conversations.get(1)
    built.runtime.api.sends.send_message(conversation, "hello", "note")


class _Keep:
    def __init__(self, into: list[Step]) -> None:
        self.into = into

    def enqueue(self, step: Step) -> None:
        self.into.append(step)
