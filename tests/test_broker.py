from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AgeLimit, Retries, TimeLimit

from worker.config import Settings
from worker.logs import register_secret
from worker.queue import broker as broker_mod
from worker.queue.broker import build_broker
from worker.queue.dead_letters import DeadLetter, drop_dead_letter, list_dead_letters, retry_dead_letter
from worker.queue.middleware import ArmedTimeLimit, DeadLetterNotice, LogContext

AMQP_URL = os.environ.get("AMQP_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")
JOIN_TIMEOUT_MS = 20_000


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["embedded", "redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[dramatiq.Broker]:
    """A broker of each kind we support (skipped when its server is not configured)."""
    kind = request.param
    if kind == "redis" and not REDIS_URL:
        pytest.skip("real Redis broker: set REDIS_URL")
    if kind == "rabbitmq" and not AMQP_URL:
        pytest.skip("RabbitMQ broker: set AMQP_URL (and install the rabbitmq extra)")
    if kind == "redis":
        redis.Redis.from_url(REDIS_URL).flushdb()
    url = {"embedded": "", "redis": REDIS_URL, "rabbitmq": AMQP_URL}[kind]
    settings = Settings(broker_url=url) if kind == "rabbitmq" else Settings(redis_url=url)
    built = build_broker(settings, set_global=False)
    yield built
    if kind == "rabbitmq":
        # Test queues are durable on the shared server: remove them.
        for queue in built.get_declared_queues() | built.get_declared_delay_queues():
            for name in (queue, f"{queue.removesuffix('.DQ')}.XQ"):
                built.channel.queue_delete(name)
    built.close()


@pytest.fixture
def redis_broker(request: pytest.FixtureRequest) -> Iterator[dramatiq.Broker]:
    """The Redis broker: on real Redis when REDIS_URL is set, else the embedded fakeredis."""
    if REDIS_URL:
        redis.Redis.from_url(REDIS_URL).flushdb()
    built = build_broker(Settings(redis_url=REDIS_URL), set_global=False)
    yield built
    built.close()


def run_worker(broker: dramatiq.Broker, queue: str, threads: int = 2) -> Callable[[], None]:
    """Start an in-process worker; returns a function that joins the queue and stops it."""
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=50)
    worker.start()

    def finish() -> None:
        try:
            broker.join(queue, timeout=JOIN_TIMEOUT_MS)
        finally:
            worker.stop()

    return finish


def test_redis_broker_is_configured_on_purpose() -> None:
    built = build_broker(Settings(redis_url=""), set_global=False)
    assert isinstance(built, RedisBroker)
    assert built.heartbeat_timeout == broker_mod.HEARTBEAT_TIMEOUT_MS
    assert built.maintenance_chance == broker_mod.MAINTENANCE_CHANCE_PER_MILLION
    assert built.dead_message_ttl == broker_mod.DEAD_MESSAGE_TTL_MS
    by_type = {type(m): m for m in built.middleware}
    retries = by_type[Retries]
    assert (retries.max_retries, retries.min_backoff, retries.max_backoff) == (8, 1_000, 60_000)
    assert by_type[ArmedTimeLimit].time_limit == 60_000  # armed in every process (finding 13.3)
    assert by_type[AgeLimit].max_age == 3_600_000
    assert LogContext in by_type and DeadLetterNotice in by_type
    assert not any("Prometheus" in type(m).__name__ for m in built.middleware)


def test_the_actor_time_limit_is_a_setting() -> None:
    built = build_broker(Settings(redis_url="", actor_time_limit_s=5), set_global=False)
    (limit,) = [m for m in built.middleware if isinstance(m, TimeLimit)]
    assert isinstance(limit, ArmedTimeLimit) and limit.time_limit == 5_000


def test_set_global(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dramatiq.broker, "global_broker", None)
    built = build_broker(Settings(redis_url=""))
    assert dramatiq.get_broker() is built


def test_broker_url_wins_over_redis_url(redis_url: str) -> None:
    if not redis_url:
        pytest.skip("needs REDIS_URL")
    built = build_broker(Settings(redis_url="redis://127.0.0.1:1/0", broker_url=redis_url), set_global=False)
    assert isinstance(built, RedisBroker)
    assert built.client.ping()


def test_actor_is_processed(broker: dramatiq.Broker) -> None:
    queue = unique("q")
    seen: list[int] = []
    lock = threading.Lock()

    def collect(n: int) -> None:
        with lock:
            seen.append(n)

    actor = dramatiq.actor(collect, broker=broker, actor_name=unique("collect"), queue_name=queue)
    finish = run_worker(broker, queue)
    for n in range(10):
        actor.send(n)
    finish()
    assert sorted(seen) == list(range(10))


def test_failed_attempt_is_retried(redis_broker: dramatiq.Broker) -> None:
    queue = unique("q")
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("first attempt fails")

    # Actor-level backoff keeps the test fast; the broker default is 1 s .. 60 s.
    actor = dramatiq.actor(
        flaky,
        broker=redis_broker,
        actor_name=unique("flaky"),
        queue_name=queue,
        min_backoff=10,
        max_backoff=20,
    )
    finish = run_worker(redis_broker, queue)
    actor.send()
    finish()
    assert len(calls) == 2
    assert list_dead_letters(redis_broker, queue) == []


def test_log_context_is_bound_per_message_and_cleared(redis_broker: dramatiq.Broker) -> None:
    queue = unique("q")
    contexts: list[dict[str, Any]] = []

    def record(firing_key: str | None = None) -> None:
        contexts.append(dict(structlog.contextvars.get_contextvars()))

    actor = dramatiq.actor(record, broker=redis_broker, actor_name=unique("record"), queue_name=queue)
    finish = run_worker(redis_broker, queue, threads=1)
    first = actor.send(firing_key="r:1:x")
    finish()
    finish = run_worker(redis_broker, queue, threads=1)
    second = actor.send()
    finish()
    assert contexts[0]["message_id"] == first.message_id
    assert contexts[0]["actor"] == actor.actor_name
    assert contexts[0]["firing_key"] == "r:1:x"
    assert contexts[1]["message_id"] == second.message_id
    assert "firing_key" not in contexts[1], "one message's firing key must not leak into the next"


def _dead_letter(broker: dramatiq.Broker, queue: str, behaviour: Callable[[], None], **kwargs: Any) -> str:
    """Run an actor that fails for good; returns its actor name."""
    name = unique("doomed")

    def doomed(firing_key: str) -> None:
        behaviour()

    actor = dramatiq.actor(doomed, broker=broker, actor_name=name, queue_name=queue, max_retries=0)
    finish = run_worker(broker, queue)
    actor.send(firing_key=kwargs.get("firing_key", "r:1:x"))
    finish()
    return name


def test_dead_letters_list_retry_drop(redis_broker: dramatiq.Broker) -> None:
    queue = unique("q")
    secret = "tok-" + uuid.uuid4().hex
    register_secret(secret)
    state = {"fail": True, "runs": 0}

    def behaviour() -> None:
        state["runs"] += 1
        if state["fail"]:
            raise RuntimeError(f"boom with Bearer {secret}")

    name = _dead_letter(redis_broker, queue, behaviour)
    letters = list_dead_letters(redis_broker)
    assert len(letters) == 1
    letter = letters[0]
    assert isinstance(letter, DeadLetter)
    assert (letter.queue, letter.actor, letter.kwargs) == (queue, name, {"firing_key": "r:1:x"})
    assert "RuntimeError" in letter.error
    assert secret not in repr(letter), "a dead-letter record must never show the token"
    assert list_dead_letters(redis_broker, queue) == letters

    state["fail"] = False
    finish = run_worker(redis_broker, queue)
    assert retry_dead_letter(redis_broker, letter.id)
    finish()
    assert state["runs"] == 2
    assert list_dead_letters(redis_broker) == []
    assert not retry_dead_letter(redis_broker, letter.id), "already retried"


def test_drop_dead_letter(redis_broker: dramatiq.Broker) -> None:
    queue = unique("q")

    def fail() -> None:
        raise ValueError("422 outside the 24-hour window")

    _dead_letter(redis_broker, queue, fail)
    (letter,) = list_dead_letters(redis_broker, queue)
    assert drop_dead_letter(redis_broker, letter.id)
    assert list_dead_letters(redis_broker, queue) == []
    assert not drop_dead_letter(redis_broker, letter.id)


def test_throws_goes_straight_to_dead_letters(redis_broker: dramatiq.Broker) -> None:
    queue = unique("q")
    calls: list[int] = []
    noticed: list[str] = []
    redis_broker.add_middleware(DeadLetterNotice(on_dead_letter=lambda m, _: noticed.append(m.message_id)))

    class Unprocessable(Exception):
        pass

    def reject() -> None:
        calls.append(1)
        raise Unprocessable("422")

    actor = dramatiq.actor(
        reject, broker=redis_broker, actor_name=unique("reject"), queue_name=queue, throws=(Unprocessable,)
    )
    finish = run_worker(redis_broker, queue)
    message = actor.send()
    finish()
    assert calls == [1], "a throws= error must not be retried"
    assert [d.message_id for d in list_dead_letters(redis_broker, queue)] == [message.message_id]
    assert noticed == [message.message_id]


def test_dead_letter_helpers_refuse_other_brokers() -> None:
    from dramatiq.brokers.stub import StubBroker

    with pytest.raises(TypeError, match="Redis broker only"):
        list_dead_letters(StubBroker())
