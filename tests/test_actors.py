"""The actors on a real dramatiq Worker and the Redis broker (real Redis with REDIS_URL,
else the embedded fakeredis), executing against the simulator over loopback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker

from tests.e2e._exec_helpers import applied_posts, flush_redis, plan_and_claim, posts, runtime_on
from worker.api.services import AUTOMATION_EXECUTIONS, BULK_ACTIONS, SEND_PATHS
from worker.queue.actors import QUEUE, Actors, declare_actors
from worker.queue.broker import build_broker
from worker.queue.dead_letters import list_dead_letters, record_dead_letter
from worker.rules.firing import Item, Step
from worker.runtime import Runtime
from worker.simulator.testing import SimulatorHandle

JOIN_TIMEOUT_MS = 30_000
WA_SEND = SEND_PATHS["whatsapp"]

RULES = """
rules:
  - id: assign-new
    when: {status: open, owner: unset}
    then:
      - assign: 103
  - id: ack
    once: per_inbound_message
    when: {status: open, waiting_for_reply: 1m}
    then:
      - reply: "Hi {{ contact.first_name }}, we got your message."
  - id: automate
    when: {status: open}
    then:
      - run_automation: 42
"""

ACK_ONLY = """
rules:
  - id: ack
    once: per_inbound_message
    when: {status: open, waiting_for_reply: 1m}
    then:
      - reply: "Hi {{ contact.first_name }}, we got your message."
"""

CANNED = """
rules:
  - id: canned
    once: per_inbound_message
    when: {status: open, waiting_for_reply: 1m}
    then:
      - reply: {predefined: "Welcome"}
"""


@dataclass
class Harness:
    runtime: Runtime
    broker: dramatiq.Broker
    actors: Actors

    def join(self) -> None:
        self.broker.join(QUEUE, timeout=JOIN_TIMEOUT_MS)


Start = Callable[..., Harness]


@pytest.fixture
def start(simulator: SimulatorHandle, redis_url: str) -> Iterator[Start]:
    """Build runtime + broker + actors on one Redis and run a 2-thread worker until the test ends."""
    flush_redis(redis_url)
    with ExitStack() as stack:

        def build(rules: str, *, max_retries: int | None = None) -> Harness:
            runtime = stack.enter_context(runtime_on(simulator, redis_url, rules))
            broker = build_broker(runtime.settings, runtime=runtime, set_global=False)
            stack.callback(broker.close)
            options = {} if max_retries is None else {"max_retries": max_retries}
            actors = declare_actors(broker, **options)
            worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
            worker.start()
            stack.callback(worker.stop)
            return Harness(runtime, broker, actors)

        yield build


def customers_waiting(simulator: SimulatorHandle, n: int) -> list[int]:
    ids = [
        int(simulator.sim.new_conversation(channel="whatsapp", contact={"name": f"Ana {i}"})["id"])
        for i in range(n)
    ]
    simulator.clock.advance(timedelta(minutes=2))
    return ids


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_broker_and_runtime_share_one_redis(start: Start) -> None:
    harness = start(ACK_ONLY)
    harness.runtime.redis.set("inboxpilot:probe", b"shared")
    assert harness.broker.client.get("inboxpilot:probe") == b"shared"  # type: ignore[attr-defined]


def test_actors_execute_every_kind(simulator: SimulatorHandle, start: Start) -> None:
    harness = start(RULES)
    ids = customers_waiting(simulator, 3)
    steps = plan_and_claim(harness.runtime, ids)
    # Replies with the same action share one step (read in one batch, sent one by one).
    assert sorted(s.kind for s in steps) == ["automation"] * 3 + ["bulk", "message"]
    assert [len(s.items) for s in steps if s.kind == "message"] == [3]
    for step in steps:
        harness.actors.enqueue(step)
    harness.join()
    (bulk,) = applied_posts(simulator, BULK_ACTIONS)
    assert bulk.body["conversation_ids"] == ids
    assert len(applied_posts(simulator, WA_SEND)) == 3
    assert len(applied_posts(simulator, AUTOMATION_EXECUTIONS)) == 3
    for step in steps:
        for item in step.items:
            assert harness.runtime.ledger.is_done(item.key), item.key


@pytest.mark.slow
def test_duplicate_messages_on_the_queue_act_once(simulator: SimulatorHandle, start: Start) -> None:
    harness = start(ACK_ONLY)
    (step,) = plan_and_claim(harness.runtime, customers_waiting(simulator, 1))
    for _ in range(3):
        harness.actors.enqueue(step)
    harness.join()
    assert len(posts(simulator, WA_SEND)) == 1


@pytest.mark.slow
def test_500_is_retried_by_dramatiq(simulator: SimulatorHandle, start: Start) -> None:
    harness = start(ACK_ONLY)
    (step,) = plan_and_claim(harness.runtime, customers_waiting(simulator, 1))
    simulator.sim.set_faults(error_rate=1.0, paths=[WA_SEND])
    harness.actors.enqueue(step)
    wait_for(lambda: bool(posts(simulator, WA_SEND)))
    simulator.sim.set_faults(error_rate=0.0)
    harness.join()
    assert [e.outcome for e in posts(simulator, WA_SEND)] == ["fault", "applied"]
    assert harness.runtime.ledger.is_done(step.items[0].key)


def test_exhausted_retries_on_500s_leave_the_firing_for_the_redrive(
    simulator: SimulatorHandle, start: Start
) -> None:
    """A transient error outlasting the retries is an outage, not a failed firing."""
    harness = start(ACK_ONLY, max_retries=0)
    (step,) = plan_and_claim(harness.runtime, customers_waiting(simulator, 1))
    simulator.sim.set_faults(error_rate=1.0, paths=[WA_SEND])
    harness.actors.enqueue(step)
    harness.join()
    entry = harness.runtime.ledger.get(step.items[0].key)
    assert entry is not None and entry.state == "pending"
    (letter,) = list_dead_letters(harness.broker, QUEUE)
    assert letter.actor == "send_reply" and "GeneralError" in letter.error
    assert applied_posts(simulator, WA_SEND) == []


def test_malformed_step_goes_straight_to_the_dead_letters(start: Start) -> None:
    harness = start(ACK_ONLY)
    harness.actors.send_reply.send({"kind": "message"}, firing_keys=["x:1:c#0"])
    harness.join()
    (letter,) = list_dead_letters(harness.broker, QUEUE)
    assert letter.retries == 0 and "MalformedStep" in letter.error


def test_a_template_that_cannot_render_fails_once_and_is_never_retried(
    simulator: SimulatorHandle, start: Start
) -> None:
    """`range(10**9)` raised OverflowError past the render guard: dramatiq retried it 8 times."""
    harness = start(CANNED)
    harness.runtime.api.predefined.create("Welcome", "{{ range(10**9)|list }}")
    (step,) = plan_and_claim(harness.runtime, customers_waiting(simulator, 1))
    harness.actors.enqueue(step)
    harness.join()
    entry = harness.runtime.ledger.get(step.items[0].key)
    assert entry is not None and entry.state == "failed" and entry.attempts == 1, entry
    assert "range()" in str(entry.reason), entry.reason
    assert list_dead_letters(harness.broker, QUEUE) == []
    assert posts(simulator, WA_SEND) == []


def test_enqueue_picks_the_actor_and_carries_the_firing_keys() -> None:
    broker = StubBroker()
    actors = declare_actors(broker)
    items = (Item("r:1:c#0", "r", 1), Item("r:2:c#0", "r", 2))
    actors.enqueue(Step("bulk", items))
    actors.enqueue(Step("automation", items[:1], action={"type": "run_automation", "automation_id": 4}))
    queue = broker.queues[QUEUE]
    sent = [dramatiq.Message.decode(queue.get_nowait()) for _ in range(queue.qsize())]
    assert [m.actor_name for m in sent] == ["bulk_action", "run_automation"]
    assert sent[0].kwargs["firing_keys"] == ["r:1:c#0", "r:2:c#0"]
    assert Step.from_dict(sent[1].args[0]).action["automation_id"] == 4
    with pytest.raises(ValueError, match="no actor"):
        actors.enqueue(Step("teleport", items))
    broker.close()


def _proxy(step: Step) -> MessageProxy:
    message: dramatiq.Message[None] = dramatiq.Message(
        queue_name=QUEUE,
        actor_name="send_reply",
        args=(step.to_dict(),),
        kwargs={"firing_keys": [i.key for i in step.items]},
        options={},
    )
    return MessageProxy(message)


def test_dead_letter_callback_fails_errors_but_leaves_age_drops_for_redrive(
    simulator: SimulatorHandle, start: Start
) -> None:
    harness = start(ACK_ONLY)
    first, second = (
        step for conv in customers_waiting(simulator, 2) for step in plan_and_claim(harness.runtime, [conv])
    )
    on_dead_letter = record_dead_letter(harness.runtime.ledger)
    on_dead_letter(_proxy(first), RuntimeError("boom"))
    on_dead_letter(_proxy(second), None)  # AgeLimit: no error, the message just waited too long
    failed = harness.runtime.ledger.get(first.items[0].key)
    pending = harness.runtime.ledger.get(second.items[0].key)
    assert failed is not None and (failed.state, failed.reason) == ("failed", "dead_lettered")
    assert pending is not None and pending.state == "pending"
