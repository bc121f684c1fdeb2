"""Delayed broker messages a live worker dropped: put them back on the delay queue.

dramatiq's delay-queue consumer fetches a delayed message (a retry with backoff, a
busy-lock retry) and holds it in memory until its eta; in Redis its id sits in that
worker's ack set. When the consumer's Redis connection fails, dramatiq throws that
memory away (``self.delay_queue = PriorityQueue()`` in dramatiq/worker.py) but the ids
stay in the ack set of a worker that is still alive and heartbeating, so the broker's
maintenance (which reclaims only dead workers' acks) never returns them: the message
waits until that worker process restarts, possibly days (dramatiq #527; seen in our chaos
runs after a Redis restart). The ledger would count such a message as queued.

`requeue_stranded` moves every delayed message held by a live worker whose eta passed
more than `grace_ms` ago back onto the delay queue's list, where any worker fetches it
again. A message a slow worker still holds gets delivered twice at worst; the ledger
makes the second delivery a no-op (``begin`` refuses an item that is no longer pending).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import redis

from worker.logs import get_logger
from worker.state.ledger import BrokerQueues

log = get_logger(__name__)

# Well past dramatiq's own hand-over: its delay consumer re-enqueues a message within about
# a second of its eta (one fetch timeout), and no retry waits longer than 60 s.
DEFAULT_GRACE_MS = 60_000

_MOVE = """
-- KEYS: ack set, delay queue list   ARGV: message id
if redis.call('srem', KEYS[1], ARGV[1]) == 1 then
  redis.call('rpush', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def requeue_stranded(
    client: redis.Redis,
    queues: BrokerQueues,
    *,
    now_ms: int | None = None,
    grace_ms: int = DEFAULT_GRACE_MS,
) -> int:
    """Move live workers' delayed messages overdue by more than `grace_ms` back to their
    delay queue; returns how many moved (each move is atomic: taken from the ack set first).

    Workers are live by their heartbeats (wall clock, as dramatiq writes them); `now_ms` is
    what etas are judged against (default: the wall clock too)."""
    wall = int(time.time() * 1000)
    now = wall if now_ms is None else now_ms
    live_since = wall - queues.heartbeat_timeout_ms
    live = client.zrangebyscore(queues.heartbeats, live_since, "+inf")
    workers = [_text(w) for w in live if isinstance(w, bytes | str)]
    moved = 0
    for queue, msgs in _delay_queues(queues):
        for worker in workers:
            acks = f"{queues.acks_prefix}{worker}.{queue}"
            overdue = _overdue(client, acks, msgs, now - grace_ms)
            for message_id in overdue:
                # dramatiq's layout: a queue's list is its message hash's name without ".msgs".
                moved += int(client.eval(_MOVE, 2, acks, msgs.removesuffix(".msgs"), message_id))
    if moved:
        log.warning("stranded_messages_requeued", count=moved)
    return moved


def _delay_queues(queues: BrokerQueues) -> Iterable[tuple[str, str]]:
    """(delay queue name, its message hash) for each delay queue of `queues`."""
    for name, msgs in zip(queues.queue_names, queues.message_hashes, strict=True):
        if name.endswith(".DQ"):
            yield name, msgs


def _overdue(client: redis.Redis, acks: str, msgs: str, before_ms: int) -> list[str]:
    ids = [_text(m) for m in client.smembers(acks)]
    if not ids:
        return []
    bodies = client.hmget(msgs, ids)
    return [mid for mid, body in zip(ids, bodies, strict=True) if body and _eta(body) < before_ms]


def _eta(body: bytes | str) -> float:
    """The message's eta in epoch ms; a message without one is not delayed (never overdue)."""
    try:
        eta = json.loads(body).get("options", {}).get("eta")
    except (ValueError, AttributeError):
        return float("inf")
    return float(eta) if isinstance(eta, int | float) else float("inf")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
