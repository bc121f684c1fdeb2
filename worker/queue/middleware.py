"""dramatiq middleware of our own: log context per message, dead-letter notice, the runtime.

Worker threads live for the whole process, and structlog's contextvars live
with the thread: without a clear at the start *and* end of every message, one
firing's key would leak into the next message's log lines.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import dramatiq
import structlog
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware, TimeLimit

from worker.logs import get_logger, scrub
from worker.metrics import DEAD_LETTERS
from worker.runtime import Runtime

log = get_logger(__name__)

# The Redis broker dead-letters the message as it was enqueued, without the
# error; we keep the (scrubbed) error next to it, expiring with it.
DEAD_LETTER_ERROR_PREFIX = "inboxpilot:dead_letter_error:"
MAX_ERROR_CHARS = 500

# Where an actor's message may carry its firing key(s): kwargs first, then options.
FIRING_KEY_FIELDS = ("firing_key", "firing_keys")


def firing_context(message: MessageProxy) -> dict[str, Any]:
    """The firing key(s) a message carries, as log context (empty when none)."""
    context: dict[str, Any] = {}
    for name in FIRING_KEY_FIELDS:
        value = message.kwargs.get(name, message.options.get(name))
        if value:
            context[name] = value
    return context


class ArmedTimeLimit(TimeLimit):
    """dramatiq's TimeLimit, armed however the worker runs.

    TimeLimit starts its watchdog thread only in `after_process_boot`, which only
    dramatiq's own CLI emits; `inboxpilot run`, `--role worker` and `demo` run
    `dramatiq.Worker` in the process, which emits `worker_boot`. Either signal
    arms it here, once (the CLI emits both).
    """

    def __init__(self, *, time_limit: int) -> None:
        super().__init__(time_limit=time_limit)
        self.armed = False
        self._arming = threading.Lock()

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        self._arm(broker)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._arm(broker)

    def _arm(self, broker: dramatiq.Broker) -> None:
        with self._arming:
            if self.armed:
                return
            super().after_process_boot(broker)  # type: ignore[no-untyped-call]  # unannotated upstream
            self.armed = True
        log.info("actor_time_limit_armed", time_limit_ms=self.time_limit)


class LogContext(Middleware):
    """Bind message_id, actor, queue, retries and firing key(s) to structlog for one message."""

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            message_id=message.message_id,
            actor=message.actor_name,
            queue=message.queue_name,
            retries=message.options.get("retries", 0),
            **firing_context(message),
        )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()


def describe_error(exception: BaseException | None) -> str:
    """One scrubbed line naming the error type and message ("" for none)."""
    if exception is None:
        return ""
    return scrub(f"{type(exception).__name__}: {exception}")[:MAX_ERROR_CHARS]


DeadLetterCallback = Callable[[MessageProxy, BaseException | None], None]
"""on_dead_letter(message, last error): the error is None when AgeLimit dropped the message."""


class DeadLetterNotice(Middleware):
    """Count and log every dead-lettered message, and tell `on_dead_letter` (e.g. the ledger).

    A message is dead-lettered (nacked) when its retries are exhausted, it
    raised a `throws=` error, or AgeLimit dropped it. The callback lets the
    loop record the firing's reason instead of waiting for the ledger re-drive.
    """

    def __init__(self, on_dead_letter: DeadLetterCallback | None = None) -> None:
        self.on_dead_letter = on_dead_letter
        # message id -> the last attempt's error, until the message is acked or nacked
        self._errors: dict[str, BaseException] = {}
        self._lock = threading.Lock()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        with self._lock:
            if exception is None:
                self._errors.pop(message.message_id, None)
            else:
                self._errors[message.message_id] = exception

    def after_ack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        with self._lock:
            self._errors.pop(message.message_id, None)

    def after_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        with self._lock:
            exception = self._errors.pop(message.message_id, None)
        DEAD_LETTERS.labels(actor=message.actor_name).inc()
        error = describe_error(exception)
        log.warning(
            "message_dead_lettered",
            message_id=message.message_id,
            actor=message.actor_name,
            retries=message.options.get("retries", 0),
            error=error,
            **firing_context(message),
        )
        redis_id = message.options.get("redis_message_id")
        if isinstance(broker, RedisBroker) and redis_id and error:
            key = DEAD_LETTER_ERROR_PREFIX + str(redis_id)
            broker.client.set(key, error, px=broker.dead_message_ttl)
        if self.on_dead_letter is not None:
            self.on_dead_letter(message, exception)


class QueuedMarker(Middleware):
    """Tells the ledger which broker message now carries each firing item.

    Every enqueue counts: the first one, a retry's, a delayed message moved to its
    queue (each gets a new Redis message id). The ledger's re-drive then knows a
    pending item still queued behind a backlog from one whose message is gone.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def after_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        keys = message.kwargs.get("firing_keys")
        ref = message.options.get("redis_message_id")
        if not keys or not ref:
            return
        try:
            self.runtime.ledger.note_queued([str(k) for k in keys], str(ref))
        except Exception:  # advisory: without it the re-drive falls back to time alone
            log.warning("queued_mark_failed", exc_info=True)


class RuntimeProvider(Middleware):
    """Hands this process's runtime to the actors of its broker (`runtime_of`), with no global."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def runtime_of(broker: dramatiq.Broker) -> Runtime:
    for middleware in broker.middleware:
        if isinstance(middleware, RuntimeProvider):
            return middleware.runtime
    raise RuntimeError("this broker has no runtime: build it with build_broker(settings, runtime=...)")
