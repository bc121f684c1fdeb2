"""The one place the dramatiq broker is built.

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
- Retries: at most 8, backoff 1 s .. 60 s (defaults: 20 retries, 15 s .. 7 days);
  `worker/execution/policy.py` holds the whole retry policy and these numbers.
  A firing must end (done, failed with reason, or dead-lettered) within minutes
  so the ledger and operators see it; 8 doublings from 1 s cap at 60 s.
  Errors that can never succeed (400/422) go straight to the dead letters via
  the actor's ``throws=(...)`` (the convention for non-retryable errors);
  ``raise dramatiq.Retry(delay=ms)`` retries quietly after e.g. a 429.
- TimeLimit ``actor_time_limit_s`` (60 s; dramatiq's default is 10 min): an attempt is
  a few HTTP calls with their own timeouts; a stuck one is interrupted and retried
  rather than holding a thread. `ArmedTimeLimit` arms it in every process: dramatiq
  only does so in its own CLI (`after_process_boot`), not for in-process workers.
- AgeLimit 1 h: a message that waited that long (a worker outage) is dropped to
  the dead letters instead of acting on stale data; its firing is still pending
  in the ledger, which re-drives it with fresh state.
- Dead letters kept 7 days (``dead_message_ttl``), for `inboxpilot dead-letters`.
- No Prometheus middleware (not on by default in 2.x; we expose our own metrics).
- RabbitMQ with ``confirm_delivery=True``: enqueue returns only once the broker
  has the message, because the ledger claim is made just before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
)

from worker.config import Settings
from worker.execution.policy import MAX_AGE_MS, MAX_BACKOFF_MS, MAX_RETRIES, MIN_BACKOFF_MS, TIME_LIMIT_MS
from worker.logs import get_logger
from worker.queue.dead_letters import record_dead_letter
from worker.queue.middleware import (
    ArmedTimeLimit,
    DeadLetterNotice,
    LogContext,
    QueuedMarker,
    RuntimeProvider,
)
from worker.runtime import Runtime
from worker.state.ledger import BrokerQueues
from worker.state.redis_conn import connect

DEFAULT_QUEUE = "default"
REDIS_NAMESPACE = "dramatiq"
HEARTBEAT_TIMEOUT_MS = 15_000
MAINTENANCE_CHANCE_PER_MILLION = 100_000
DEAD_MESSAGE_TTL_MS = 7 * 24 * 3600 * 1000
AMQP_SCHEMES = ("amqp://", "amqps://")

log = get_logger(__name__)


def default_middleware(
    extra: Sequence[Middleware] = (), *, time_limit_ms: int = TIME_LIMIT_MS
) -> list[Middleware]:
    """dramatiq's default middleware with our limits, plus CurrentMessage, log context and `extra`."""
    return [
        AgeLimit(max_age=MAX_AGE_MS),
        ArmedTimeLimit(time_limit=time_limit_ms),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=MAX_RETRIES, min_backoff=MIN_BACKOFF_MS, max_backoff=MAX_BACKOFF_MS),
        CurrentMessage(),
        LogContext(),
        *extra,
    ]


def broker_queues(settings: Settings, queue: str) -> BrokerQueues | None:
    """Where the Redis broker keeps `queue`'s messages, when it lives on the ledger's Redis
    (None for RabbitMQ or a broker on another server: the re-drive then goes by time)."""
    url = settings.broker_url or settings.redis_url
    if url.startswith(AMQP_SCHEMES) or (settings.broker_url and settings.broker_url != settings.redis_url):
        return None
    names = (queue, f"{queue}.DQ")
    return BrokerQueues(
        message_hashes=tuple(f"{REDIS_NAMESPACE}:{name}.msgs" for name in names),
        heartbeats=f"{REDIS_NAMESPACE}:__heartbeats__",
        acks_prefix=f"{REDIS_NAMESPACE}:__acks__.",
        queue_names=names,
        heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS,
    )


def build_broker(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    extra_middleware: Sequence[Middleware] = (),
    set_global: bool = True,
) -> dramatiq.Broker:
    """Build the broker for `settings` and (by default) make it dramatiq's global broker.

    With a `runtime`, the broker can run the actors: `RuntimeProvider` hands the
    runtime to them, and dead letters are recorded in its ledger. Without one it
    can only enqueue and manage dead letters (`inboxpilot dead-letters`).
    `extra_middleware` is appended; a plain `DeadLetterNotice()` (metric + log) is
    added when it has none and there is no runtime.
    """
    extra = list(extra_middleware)
    if runtime is not None:
        from_runtime: list[Middleware] = [RuntimeProvider(runtime), QueuedMarker(runtime)]
        if not any(isinstance(m, DeadLetterNotice) for m in extra):
            from_runtime.append(DeadLetterNotice(on_dead_letter=record_dead_letter(runtime.ledger)))
        extra = from_runtime + extra
    if not any(isinstance(m, DeadLetterNotice) for m in extra):
        extra.append(DeadLetterNotice())
    middleware = default_middleware(extra, time_limit_ms=int(settings.actor_time_limit_s * 1000))
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
