"""The execution layer against the simulator over loopback HTTP, on the shared fake clock.

Every test checks the simulator's audit log (what really reached the API), not
only the ledger.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta

import httpx
import pytest
from dramatiq.errors import Retry

from tests.e2e._exec_helpers import applied_posts, flush_redis, plan_and_claim, posts, runtime_on
from worker.api.errors import GeneralError, TransportError, Unavailable
from worker.api.services import BULK_ACTIONS, SEND_PATHS
from worker.clock import FakeClock
from worker.execution.execute import execute
from worker.execution.runs import idempotency_key
from worker.rules.firing import Step
from worker.runtime import Runtime
from worker.simulator.testing import SimulatorHandle
from worker.state.locks import EXEC_LOCK_PREFIX

WA_SEND = SEND_PATHS["whatsapp"]
EXECUTIONS = "/automations-executions"

ASSIGN_NEW = """
rules:
  - id: assign-new
    when: {status: open, owner: unset}
    then:
      - assign: 103
"""

ACK = """
rules:
  - id: ack
    once: per_inbound_message
    when: {status: open, waiting_for_reply: 1m}
    then:
      - reply: "Hi {{ contact.first_name }}, we got your message."
"""

NUDGE = """
rules:
  - id: nudge
    when: {status: open}
    then:
      - reply:
          text: "Still there, {{ contact.first_name }}?"
          {policy}
"""

BAD_STAGE = """
rules:
  - id: bad-move
    when: {status: open}
    then:
      - move: {pipeline: 1, stage: 99}
"""

BROKEN_TEMPLATE = """
rules:
  - id: shout
    when: {status: open}
    then:
      - note: "{{ contact.name.upper() }}"
"""

NOTE = """
rules:
  - id: tag-note
    when: {status: open}
    then:
      - note: "Seen by the bot for {{ contact.name }}."
"""

AUTOMATE = """
rules:
  - id: automate
    when: {status: open}
    then:
      - run_automation: 42
"""

Make = Callable[..., Runtime]


@pytest.fixture
def make(simulator: SimulatorHandle, redis_url: str) -> Iterator[Make]:
    flush_redis(redis_url)
    with ExitStack() as stack:

        def build(rules: str, clock: FakeClock | None = None) -> Runtime:
            return stack.enter_context(runtime_on(simulator, redis_url, rules, clock=clock))

        yield build


def outcome(runtime: Runtime, step: Step) -> dict[str, object]:
    entry = runtime.ledger.get(step.items[0].key)
    assert entry is not None
    return {"state": entry.state, "reason": entry.reason, **entry.outcome}


def customer_waiting(simulator: SimulatorHandle, channel: str = "whatsapp", **contact: object) -> int:
    conv = simulator.sim.new_conversation(channel=channel, contact=dict(contact) or {"name": "Ana Lima"})
    simulator.clock.advance(timedelta(minutes=2))
    return int(conv["id"])


# --- bulk -----------------------------------------------------------------------------------


def test_120_conversations_become_3_bulk_calls(simulator: SimulatorHandle, make: Make) -> None:
    runtime = make(ASSIGN_NEW)
    ids = [simulator.sim.new_conversation(channel="webchat")["id"] for _ in range(120)]
    steps = plan_and_claim(runtime, ids)
    assert [len(s.items) for s in steps] == [50, 50, 20]
    for step in steps:
        execute(runtime, step)
    calls = applied_posts(simulator, BULK_ACTIONS)
    assert len(calls) == 3
    assert all(len(c.body["conversation_ids"]) <= 50 for c in calls)
    assert sorted(i for c in calls for i in c.body["conversation_ids"]) == sorted(ids)
    assert all(c.idempotency_key for c in calls)
    for step in steps:
        for item in step.items:
            entry = runtime.ledger.get(item.key)
            assert entry is not None and entry.state == "done"
    assert {simulator.sim.conversation(i)["owner_id"] for i in ids} == {103}


def test_bulk_skips_taken_and_gone_conversations(simulator: SimulatorHandle, make: Make) -> None:
    runtime = make(ASSIGN_NEW)
    ids = [simulator.sim.new_conversation(channel="sms")["id"] for _ in range(4)]
    (step,) = plan_and_claim(runtime, ids)
    simulator.sim.reassign(ids[0], 105)  # someone else took it
    runtime.api.conversations.remove(ids[1])  # deleted
    execute(runtime, step)
    (call,) = applied_posts(simulator, BULK_ACTIONS)
    assert call.body["conversation_ids"] == ids[2:]
    by_conv = {item.conversation_id: runtime.ledger.get(item.key) for item in step.items}
    assert by_conv[ids[0]] is not None and by_conv[ids[0]].outcome["result"] == "skipped"
    assert str(by_conv[ids[0]].outcome["reason"]).startswith("moot")
    assert by_conv[ids[1]] is not None and str(by_conv[ids[1]].outcome["reason"]).startswith("gone")
    assert simulator.sim.conversation(ids[0])["owner_id"] == 105


def test_bulk_commit_then_fail_is_reconciled_from_the_fields(simulator: SimulatorHandle, make: Make) -> None:
    runtime = make(ASSIGN_NEW)
    ids = [simulator.sim.new_conversation(channel="sms")["id"] for _ in range(3)]
    (step,) = plan_and_claim(runtime, ids)
    simulator.sim.set_faults(commit_then_fail_rate=1.0, commit_then_fail_mode="503", paths=[BULK_ACTIONS])
    with pytest.raises(Unavailable):
        execute(runtime, step)
    simulator.sim.set_faults(commit_then_fail_rate=0.0)
    simulator.sim.idempotency.clear()  # as a real API without key support: only the read-back helps
    execute(runtime, step)
    assert len(posts(simulator, BULK_ACTIONS)) == 1
    entries = [runtime.ledger.get(item.key) for item in step.items]
    assert all(e is not None and e.state == "done" and e.outcome.get("already") for e in entries)


def test_bulk_400_fails_with_reason_and_no_retry(simulator: SimulatorHandle, make: Make) -> None:
    runtime = make(BAD_STAGE)
    conv = simulator.sim.new_conversation(channel="sms")
    (step,) = plan_and_claim(runtime, [conv["id"]])
    execute(runtime, step)  # returns: nothing for dramatiq to retry
    result = outcome(runtime, step)
    assert result["state"] == "failed"
    assert str(result["reason"]).startswith("400 BadRequest")
    assert "pipeline_stage_id" in str(result["reason"])
    execute(runtime, step)  # a duplicate delivery does not try again
    assert len(posts(simulator, BULK_ACTIONS)) == 1


# --- replies: exactly once ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["503", "drop"])
def test_commit_then_fail_reply_gives_exactly_one_message(
    simulator: SimulatorHandle, make: Make, mode: str
) -> None:
    runtime = make(ACK)
    conv_id = customer_waiting(simulator)
    (step,) = plan_and_claim(runtime, [conv_id])
    simulator.sim.set_faults(commit_then_fail_rate=1.0, commit_then_fail_mode=mode, paths=[WA_SEND])
    with pytest.raises((Unavailable, TransportError)):
        execute(runtime, step)
    simulator.sim.set_faults(commit_then_fail_rate=0.0)
    simulator.sim.idempotency.clear()  # the read-back, not the server's replay, must prevent a resend
    execute(runtime, step)
    sent = [m for m in simulator.sim.messages(conv_id) if m["direction"] == "outbound"]
    assert [m["message_text"] for m in sent] == ["Hi Ana, we got your message."]
    assert len(posts(simulator, WA_SEND)) == 1
    result = outcome(runtime, step)
    assert result["state"] == "done" and result.get("reconciled") is True


def test_commit_then_fail_note_is_found_by_read_back(simulator: SimulatorHandle, make: Make) -> None:
    # A note does not make its rule false (notes are not replies): only the read-back stops a resend.
    runtime = make(NOTE)
    conv = simulator.sim.new_conversation(channel="webchat", contact={"name": "Ana"})
    (step,) = plan_and_claim(runtime, [conv["id"]])
    path = SEND_PATHS["webchat"]
    simulator.sim.set_faults(commit_then_fail_rate=1.0, commit_then_fail_mode="drop", paths=[path])
    with pytest.raises(TransportError):
        execute(runtime, step)
    simulator.sim.set_faults(commit_then_fail_rate=0.0)
    simulator.sim.idempotency.clear()
    execute(runtime, step)
    notes = [m for m in simulator.sim.messages(conv["id"]) if m["message_type"] == "note"]
    assert [m["message_text"] for m in notes] == ["Seen by the bot for Ana."]
    assert len(posts(simulator, path)) == 1
    assert outcome(runtime, step).get("reconciled") is True


def test_500_is_retried_then_done(simulator: SimulatorHandle, make: Make) -> None:
    runtime = make(ACK)
    conv_id = customer_waiting(simulator)
    (step,) = plan_and_claim(runtime, [conv_id])
    simulator.sim.set_faults(error_rate=1.0, paths=[WA_SEND])
    with pytest.raises(GeneralError):
        execute(runtime, step)
    assert outcome(runtime, step)["state"] == "pending"
    simulator.sim.set_faults(error_rate=0.0)
    execute(runtime, step)
    assert len(applied_posts(simulator, WA_SEND)) == 1
    assert outcome(runtime, step)["state"] == "done"


def test_429_retries_quietly_after_retry_after(simulator: SimulatorHandle, make: Make) -> None:
    runtime = make(ACK)
    conv_id = customer_waiting(simulator)
    (step,) = plan_and_claim(runtime, [conv_id])
    simulator.sim.set_faults(rate_limit_per_s=0.1, rate_burst=1, paths=[WA_SEND])
    # Spend the one token so the worker's send is the one that is refused.
    httpx.post(simulator.url + WA_SEND, headers=simulator.headers, json={})
    with pytest.raises(Retry) as raised:
        execute(runtime, step)
    assert raised.value.delay is not None and raised.value.delay >= 1000
    assert outcome(runtime, step)["state"] == "pending"
    assert applied_posts(simulator, WA_SEND) == []


def test_duplicate_delivery_sends_once(simulator: SimulatorHandle, make: Make) -> None:
    runtime = make(ACK)
    conv_id = customer_waiting(simulator)
    (step,) = plan_and_claim(runtime, [conv_id])
    execute(runtime, step)
    execute(runtime, step)
    assert len(posts(simulator, WA_SEND)) == 1


def test_concurrent_deliveries_send_once(simulator: SimulatorHandle, make: Make) -> None:
    runtime = make(ACK)
    conv_id = customer_waiting(simulator)
    (step,) = plan_and_claim(runtime, [conv_id])
    simulator.sim.set_faults(latency_s=0.3, paths=[WA_SEND])  # keep the first delivery inside its call
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def deliver() -> None:
        barrier.wait()
        try:
            execute(runtime, step)
        except Retry as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(posts(simulator, WA_SEND)) == 1
    assert outcome(runtime, step)["state"] == "done"
    assert len(errors) <= 1  # the loser either found the lock held or the item finished
    assert not runtime.redis.exists(EXEC_LOCK_PREFIX + step.items[0].key)  # released


def test_busy_item_retries_quietly(simulator: SimulatorHandle, make: Make) -> None:
    runtime = make(ACK)
    conv_id = customer_waiting(simulator)
    (step,) = plan_and_claim(runtime, [conv_id])
    runtime.redis.set(EXEC_LOCK_PREFIX + step.items[0].key, "someone-else", px=60_000)
    with pytest.raises(Retry):
        execute(runtime, step)
    assert posts(simulator, WA_SEND) == []
    assert runtime.redis.get(EXEC_LOCK_PREFIX + step.items[0].key) == b"someone-else"  # not ours to free


def test_moot_when_team_replied_first(simulator: SimulatorHandle, make: Make) -> None:
    runtime = make(ACK)
    conv_id = customer_waiting(simulator)
    (step,) = plan_and_claim(runtime, [conv_id])
    simulator.sim.team_reply(conv_id, "Hi, I'm on it.")
    execute(runtime, step)
    assert posts(simulator, WA_SEND) == []
    result = outcome(runtime, step)
    assert result["result"] == "skipped" and str(result["reason"]).startswith("moot")


def test_rule_removed_before_execution_is_skipped(simulator: SimulatorHandle, make: Make) -> None:
    planner = make(ACK)
    conv_id = customer_waiting(simulator)
    (step,) = plan_and_claim(planner, [conv_id])
    executor_runtime = make(ASSIGN_NEW)  # the rule set was edited in between
    execute(executor_runtime, step)
    assert posts(simulator, WA_SEND) == []
    assert "no longer in the rule set" in str(outcome(executor_runtime, step)["reason"])


def test_template_error_fails_without_sending(simulator: SimulatorHandle, make: Make) -> None:
    runtime = make(BROKEN_TEMPLATE)
    conv = simulator.sim.new_conversation(channel="webchat", contact={"name": None})
    (step,) = plan_and_claim(runtime, [conv["id"]])
    execute(runtime, step)
    result = outcome(runtime, step)
    assert result["state"] == "failed" and str(result["reason"]).startswith("template:")
    assert posts(simulator, SEND_PATHS["webchat"]) == []


# --- the 24-hour window ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("outside_window: template\n          template: followup_checkin", "template"),
        ("outside_window: note", "note"),
        ("outside_window: skip", None),
    ],
)
def test_whatsapp_outside_window(
    simulator: SimulatorHandle, make: Make, policy: str, expected: str | None
) -> None:
    runtime = make(NUDGE.replace("{policy}", policy))
    conv_id = simulator.sim.new_conversation(channel="whatsapp", contact={"name": "Ana Lima"})["id"]
    simulator.clock.advance(timedelta(hours=25))
    (step,) = plan_and_claim(runtime, [conv_id])
    execute(runtime, step)
    calls = posts(simulator, WA_SEND)
    assert all(c.status != 422 for c in simulator.sim.audit_log())
    if expected is None:
        assert calls == []
        result = outcome(runtime, step)
        assert result["result"] == "skipped" and str(result["reason"]).startswith("outside_window")
        return
    (call,) = calls
    assert call.applied and call.body["message_type"] == expected
    assert call.body["message_text"] == "Still there, Ana?"
    if expected == "template":
        assert call.body["template_name"] == "followup_checkin"


def test_inside_window_sends_plain_text(simulator: SimulatorHandle, make: Make) -> None:
    runtime = make(NUDGE.replace("{policy}", "outside_window: note"))
    conv_id = simulator.sim.new_conversation(channel="whatsapp", contact={"name": "Ana Lima"})["id"]
    simulator.clock.advance(timedelta(hours=23))
    (step,) = plan_and_claim(runtime, [conv_id])
    execute(runtime, step)
    (call,) = applied_posts(simulator, WA_SEND)
    assert call.body["message_type"] == "text"


def test_template_elsewhere_than_whatsapp_is_skipped(simulator: SimulatorHandle, make: Make) -> None:
    runtime = make(NUDGE.replace("{policy}", "outside_window: template\n          template: checkin"))
    conv_id = simulator.sim.new_conversation(channel="instagram", contact={"name": "Ana"})["id"]
    simulator.clock.advance(timedelta(hours=25))
    (step,) = plan_and_claim(runtime, [conv_id])
    execute(runtime, step)
    assert posts(simulator, SEND_PATHS["instagram"]) == []
    assert "whatsapp only" in str(outcome(runtime, step)["reason"])


def test_422_fails_with_reason(simulator: SimulatorHandle, make: Make) -> None:
    # Our clock lags the API's by an hour: we think the window is open, the API refuses.
    lagging = FakeClock(simulator.clock.now())
    runtime = make(NUDGE.replace("{policy}", "outside_window: skip"), clock=lagging)
    conv_id = simulator.sim.new_conversation(channel="whatsapp", contact={"name": "Ana"})["id"]
    simulator.clock.advance(timedelta(hours=24, minutes=30))
    lagging.advance(timedelta(hours=23, minutes=30))
    (step,) = plan_and_claim(runtime, [conv_id])
    execute(runtime, step)
    result = outcome(runtime, step)
    assert result["state"] == "failed" and str(result["reason"]).startswith("422 Unprocessable")
    assert len(posts(simulator, WA_SEND)) == 1  # tried once, never retried


# --- automations ----------------------------------------------------------------------------


def test_automation_retry_reuses_the_key(simulator: SimulatorHandle, make: Make) -> None:
    runtime = make(AUTOMATE)
    conv = simulator.sim.new_conversation(channel="webchat")
    (step,) = plan_and_claim(runtime, [conv["id"]])
    simulator.sim.set_faults(commit_then_fail_rate=1.0, commit_then_fail_mode="503", paths=[EXECUTIONS])
    with pytest.raises(Unavailable):
        execute(runtime, step)
    simulator.sim.set_faults(commit_then_fail_rate=0.0)
    execute(runtime, step)
    calls = posts(simulator, EXECUTIONS)
    assert [c.outcome for c in calls] == ["applied", "replay"]
    assert {c.idempotency_key for c in calls} == {idempotency_key(step.items[0].key)}
    payload = calls[0].body["initial_payload"]
    assert payload["conversation"]["id"] == conv["id"] and payload["contact"]["id"] == conv["contact_id"]
    assert outcome(runtime, step)["state"] == "done"
