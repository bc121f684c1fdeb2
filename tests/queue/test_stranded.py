"""A delayed message a live worker dropped after a Redis connection error is delivered again.

Seen in the breadth chaos run: after a Redis restart, dramatiq's delay consumer threw away
the delayed retries it held (``self.delay_queue = PriorityQueue()`` on a connection error)
while their ids stayed in the ack set of the still-living worker; nothing ever delivered
them and the ledger took them for queued.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from queue import PriorityQueue

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from tests.e2e._app_helpers import wait_for
from worker.config import Settings
from worker.queue.broker import REDIS_NAMESPACE, broker_queues
from worker.state.ledger import BrokerQueues
from worker.state.stranded import DEFAULT_GRACE_MS, requeue_stranded

QUEUE = "stranded-test"


@pytest.fixture
def broker(redis_client: redis.Redis) -> Iterator[RedisBroker]:
    built = RedisBroker(client=redis_client, namespace=REDIS_NAMESPACE, heartbeat_timeout=15_000)
    yield built
    built.close()


def _queues() -> BrokerQueues:
    queues = broker_queues(Settings(redis_url=""), QUEUE)
    assert queues is not None
    return queues


def _held_by_worker(client: redis.Redis, queues: BrokerQueues) -> bool:
    return any(client.smembers(key) for key in client.scan_iter(f"{queues.acks_prefix}*.{QUEUE}.DQ"))


def test_a_delayed_message_dropped_by_a_live_worker_runs_after_the_requeue(
    broker: RedisBroker, redis_client: redis.Redis
) -> None:
    ran = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
    def job() -> None:
        ran.set()

    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        queues = _queues()
        job.send_with_options(delay=300)
        wait_for(lambda: _held_by_worker(redis_client, queues), 10)
        # What dramatiq does to its delay consumer on a Redis connection error.
        worker.consumers[f"{QUEUE}.DQ"].delay_queue = PriorityQueue()
        assert not ran.wait(1.0), "dropped from memory, the message must not run by itself"
        assert requeue_stranded(redis_client, queues, now_ms=int(time.time() * 1000)) == 0  # not yet overdue
        later = int(time.time() * 1000) + DEFAULT_GRACE_MS + 1_000
        assert requeue_stranded(redis_client, queues, now_ms=later) == 1
        assert ran.wait(10), "requeued, a worker fetches and runs it"
        assert requeue_stranded(redis_client, queues, now_ms=later) == 0
    finally:
        worker.stop()


def test_messages_of_dead_workers_and_not_yet_due_ones_are_left_alone(redis_client: redis.Redis) -> None:
    """Dead workers' acks are dramatiq's own maintenance; a message before its eta is still held."""
    queues = _queues()
    now = int(time.time() * 1000)
    redis_client.zadd(queues.heartbeats, {"live": now, "dead": now - 60_000})
    msgs = f"{REDIS_NAMESPACE}:{QUEUE}.DQ.msgs"
    overdue = b'{"options": {"eta": %d}}' % (now - DEFAULT_GRACE_MS - 5_000)
    future = b'{"options": {"eta": %d}}' % (now + 30_000)
    redis_client.hset(msgs, mapping={"a": overdue, "b": future, "c": overdue, "d": b"{}"})
    redis_client.sadd(f"{queues.acks_prefix}live.{QUEUE}.DQ", "a", "b", "d")
    redis_client.sadd(f"{queues.acks_prefix}dead.{QUEUE}.DQ", "c")
    assert requeue_stranded(redis_client, queues, now_ms=now) == 1
    assert redis_client.lrange(f"{REDIS_NAMESPACE}:{QUEUE}.DQ", 0, -1) == [b"a"]
    assert redis_client.smembers(f"{queues.acks_prefix}live.{QUEUE}.DQ") == {b"b", b"d"}
    assert redis_client.smembers(f"{queues.acks_prefix}dead.{QUEUE}.DQ") == {b"c"}
