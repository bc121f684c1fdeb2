"""The one place the dramatiq broker is built, and the dead-letter helpers.

Which broker: ``settings.broker_url`` if set, else ``settings.redis_url``;
``amqp://`` gives RabbitMQ, ``redis://`` the Redis broker on a client from
`worker.state.redis_conn.connect` (bytes mode: dramatiq's decoder expects bytes), and
both empty gives the Redis broker on the embedded in-process fakeredis (the
same server the ledger and timers use in that process).

Every dramatiq default that matters for exactly-once is set here on purpose:

- ``heartbeat_timeout`` 15 s (default 60 s): a killed worker's unacked messages
  go back on the queue sooner. A live worker heartbeats about once a second
  even while busy (its delay-queue consumer keeps fetching), so 15 s does not
  requeue work that is still running (which would cause duplicates, #692).
- ``maintenance_chance`` 10 % of broker commands (default 0.1 %): maintenance is
  what actually requeues a dead worker's messages, and on a quiet queue 0.1 %
  can take very long (#527). It costs two small sorted-set reads.
- Retries: at most 8, backoff 1 s .. 60 s (defaults: 20 retries, 15 s .. 7 days).
  A firing must end (done, failed with reason, or dead-lettered) within minutes
  so the ledger and operators see it; 8 doublings from 1 s cap at 60 s.
  Errors that can never succeed (400/422) go straight to the dead letters via
  the actor's ``throws=(...)`` (the convention for non-retryable errors);
  ``raise dramatiq.Retry(delay=ms)`` retries quietly after e.g. a 429.
- TimeLimit 60 s (default 10 min): an attempt is a few HTTP calls with their own
  timeouts; a stuck one is interrupted and retried rather than holding a thread.
- AgeLimit 1 h: a message that waited that long (a worker outage) is dropped to
  the dead letters instead of acting on stale data; its firing is still pending
  in the ledger, which re-drives it with fresh state.
- Dead letters kept 7 days (``dead_message_ttl``), for `inboxpilot dead-letters`.
- No Prometheus middleware (not on by default in 2.x; we expose our own metrics).
- RabbitMQ with ``confirm_delivery=True``: enqueue returns only once the broker
  has the message, because the ledger claim is made just before it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, q_name
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from worker.clock import from_epoch
from worker.config import Settings
from worker.logs import get_logger, scrub
from worker.queue.middleware import DEAD_LETTER_ERROR_PREFIX, DeadLetterNotice, LogContext
from worker.state.redis_conn import connect

DEFAULT_QUEUE = "default"
REDIS_NAMESPACE = "dramatiq"
HEARTBEAT_TIMEOUT_MS = 15_000
MAINTENANCE_CHANCE_PER_MILLION = 100_000
DEAD_MESSAGE_TTL_MS = 7 * 24 * 3600 * 1000
MAX_RETRIES = 8
MIN_BACKOFF_MS = 1_000
MAX_BACKOFF_MS = 60_000
TIME_LIMIT_MS = 60_000
MAX_AGE_MS = 3600 * 1000
AMQP_SCHEMES = ("amqp://", "amqps://")
# Options Retries adds to a message; cleared when an operator retries a dead letter.
_RETRY_STATE_OPTIONS = ("retries", "traceback", "requeue_timestamp", "eta", "redis_message_id")

log = get_logger(__name__)


def default_middleware(extra: Sequence[Middleware] = ()) -> list[Middleware]:
    """dramatiq's default middleware with our limits, plus CurrentMessage, log context and `extra`."""
    return [
        AgeLimit(max_age=MAX_AGE_MS),
        TimeLimit(time_limit=TIME_LIMIT_MS),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=MAX_RETRIES, min_backoff=MIN_BACKOFF_MS, max_backoff=MAX_BACKOFF_MS),
        CurrentMessage(),
        LogContext(),
        *extra,
    ]


def build_broker(
    settings: Settings,
    *,
    extra_middleware: Sequence[Middleware] = (),
    set_global: bool = True,
) -> dramatiq.Broker:
    """Build the broker for `settings` and (by default) make it dramatiq's global broker.

    `extra_middleware` is appended, e.g. `DeadLetterNotice(on_dead_letter=...)`;
    a plain `DeadLetterNotice()` (metric + log) is added when none is given.
    """
    extra = list(extra_middleware)
    if not any(isinstance(m, DeadLetterNotice) for m in extra):
        extra.append(DeadLetterNotice())
    middleware = default_middleware(extra)
    url = settings.broker_url or settings.redis_url
    broker: dramatiq.Broker
    if url.startswith(AMQP_SCHEMES):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker  # needs the `rabbitmq` extra (pika)

        broker = RabbitmqBroker(url=url, middleware=middleware, confirm_delivery=True)
    else:
        broker = RedisBroker(  # type: ignore[no-untyped-call]  # its __init__ is unannotated
            client=connect(url),
            middleware=middleware,
            namespace=REDIS_NAMESPACE,
            heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
            maintenance_chance=MAINTENANCE_CHANCE_PER_MILLION,
            dead_message_ttl=DEAD_MESSAGE_TTL_MS,
        )
    log.info("broker_built", broker=type(broker).__name__, embedded=not url)
    if set_global:
        dramatiq.set_broker(broker)
    return broker


# --- dead letters (Redis broker) --------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered message, as `inboxpilot dead-letters list` shows it (secrets scrubbed)."""

    id: str  # the broker's redis message id: what retry/drop take
    queue: str
    message_id: str
    actor: str
    dead_at: datetime
    retries: int
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    error: str = ""


# Remove one dead letter atomically and return its data: two operators retrying
# the same id cannot both re-enqueue it.
_TAKE = """
local data = redis.call('hget', KEYS[2], ARGV[1])
if not data then return false end
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('hdel', KEYS[2], ARGV[1])
return data
"""


def _redis_broker(broker: dramatiq.Broker) -> RedisBroker:
    if not isinstance(broker, RedisBroker):
        raise TypeError(
            f"dead-letter commands work on the Redis broker only, not {type(broker).__name__}; "
            "with RabbitMQ use its management UI on the '<queue>.XQ' queues"
        )
    return broker


def _xq(broker: RedisBroker, queue: str) -> tuple[str, str]:
    key = f"{broker.namespace}:{q_name(queue)}.XQ"
    return key, key + ".msgs"


def dead_letter_queues(broker: dramatiq.Broker) -> list[str]:
    """Queue names that have dead letters (found in Redis, declared here or not)."""
    rb = _redis_broker(broker)
    client: redis.Redis = rb.client
    prefix = f"{rb.namespace}:"
    names = {_text(k)[len(prefix) : -len(".XQ")] for k in client.scan_iter(match=f"{prefix}*.XQ")}
    return sorted(names)


def list_dead_letters(broker: dramatiq.Broker, queue: str | None = None) -> list[DeadLetter]:
    """Dead letters, oldest first, of `queue` or of every queue."""
    rb = _redis_broker(broker)
    out: list[DeadLetter] = []
    for name in [queue] if queue else dead_letter_queues(rb):
        zkey, hkey = _xq(rb, name)
        client: redis.Redis = rb.client
        entries = cast(list[tuple[bytes, float]], client.zrange(zkey, 0, -1, withscores=True))
        for rid, score in entries:
            data = cast(bytes | None, client.hget(hkey, rid))
            if data is not None:
                error = cast(bytes | None, client.get(DEAD_LETTER_ERROR_PREFIX + _text(rid)))
                out.append(_describe(_text(rid), name, data, score, _text(error or b"")))
    return out


def _describe(rid: str, queue: str, data: bytes, score: float, error: str) -> DeadLetter:
    message = dramatiq.Message.decode(data)
    return DeadLetter(
        id=rid,
        queue=queue,
        message_id=message.message_id,
        actor=message.actor_name,
        dead_at=from_epoch(score / 1000),
        retries=int(message.options.get("retries", 0)),
        args=tuple(json.loads(scrub(json.dumps(list(message.args), default=str)))),
        kwargs=json.loads(scrub(json.dumps(message.kwargs, default=str))),
        error=scrub(error),
    )


def _find_queue(broker: RedisBroker, dead_letter_id: str, queue: str | None) -> str | None:
    for name in [queue] if queue else dead_letter_queues(broker):
        if broker.client.hexists(_xq(broker, name)[1], dead_letter_id):
            return name
    return None


def retry_dead_letter(broker: dramatiq.Broker, dead_letter_id: str, queue: str | None = None) -> bool:
    """Re-enqueue a dead letter with fresh retries and age; False when no such id.

    The message keeps its `message_id` and its firing key: the ledger still
    decides whether anything is sent.
    """
    rb = _redis_broker(broker)
    name = _find_queue(rb, dead_letter_id, queue)
    if name is None:
        return False
    zkey, hkey = _xq(rb, name)
    data = rb.client.register_script(_TAKE)(keys=[zkey, hkey], args=[dead_letter_id])
    if not data:
        return False
    message = dramatiq.Message.decode(data)
    options = {k: v for k, v in message.options.items() if k not in _RETRY_STATE_OPTIONS}
    fresh: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=q_name(message.queue_name),
        actor_name=message.actor_name,
        args=message.args,
        kwargs=message.kwargs,
        options=options,
        message_id=message.message_id,
        message_timestamp=current_millis(),  # or AgeLimit would drop it again at once
    )
    try:
        rb.enqueue(fresh)
    except Exception:
        # Put it back: an operator's retry must never lose the message.
        rb.client.zadd(zkey, {dead_letter_id: current_millis()})
        rb.client.hset(hkey, dead_letter_id, data)
        raise
    rb.client.delete(DEAD_LETTER_ERROR_PREFIX + dead_letter_id)
    log.info("dead_letter_retried", dead_letter_id=dead_letter_id, message_id=message.message_id)
    return True


def drop_dead_letter(broker: dramatiq.Broker, dead_letter_id: str, queue: str | None = None) -> bool:
    """Delete a dead letter for good; False when no such id."""
    rb = _redis_broker(broker)
    name = _find_queue(rb, dead_letter_id, queue)
    if name is None:
        return False
    zkey, hkey = _xq(rb, name)
    taken = rb.client.register_script(_TAKE)(keys=[zkey, hkey], args=[dead_letter_id])
    rb.client.delete(DEAD_LETTER_ERROR_PREFIX + dead_letter_id)
    if taken:
        log.info("dead_letter_dropped", dead_letter_id=dead_letter_id)
    return bool(taken)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
