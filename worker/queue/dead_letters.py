"""Dead letters: what `inboxpilot dead-letters` lists, retries and drops, and what the ledger records.

A message dramatiq gives up on lands in the broker's dead-letter queue. Its items
end ``failed`` "dead_lettered" in the ledger unless the last error was transient
(`worker.execution.policy.left_for_redrive`): those stay pending for the
ledger's re-drive.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, cast

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, q_name

from worker.clock import from_epoch
from worker.execution.policy import left_for_redrive
from worker.logs import get_logger, scrub
from worker.queue.middleware import DEAD_LETTER_ERROR_PREFIX, DeadLetterCallback
from worker.state.ledger import Ledger

log = get_logger(__name__)

DEAD_LETTERED = "dead_lettered"
# Options Retries adds to a message; cleared when an operator retries a dead letter.
_RETRY_STATE_OPTIONS = ("retries", "traceback", "requeue_timestamp", "eta", "redis_message_id")


class QueueMessage(Protocol):
    """What `item_keys` reads of a message (a dramatiq message, its proxy or a `DeadLetter`)."""

    @property
    def args(self) -> tuple[Any, ...]: ...

    @property
    def kwargs(self) -> dict[str, Any]: ...


def item_keys(message: QueueMessage) -> list[str]:
    """The ledger keys of the items a queue message carries."""
    step = message.args[0] if message.args else message.kwargs.get("step")
    if isinstance(step, Mapping):
        items = step.get("items") or []
        keys = [str(i["key"]) for i in items if isinstance(i, Mapping) and "key" in i]
        if keys:
            return keys
    return [str(k) for k in message.kwargs.get("firing_keys") or []]


def record_dead_letter(ledger: Ledger) -> DeadLetterCallback:
    """The `DeadLetterNotice` callback: the message's items end as failed "dead_lettered".

    A message dropped without an error (AgeLimit: it waited too long on the
    queue) is not a failed firing: its items stay pending and the ledger
    re-drives them with fresh state. Nor is one whose last error was transient
    (the API down or rate-limiting for longer than the retries last, Redis
    away, the item busy): failing it would lose a firing that an outage merely
    delayed; the re-drive tries again later, up to the ledger's re-drive limit.
    """

    def on_dead_letter(message: QueueMessage, error: BaseException | None) -> None:
        keys = item_keys(message)
        why = left_for_redrive(error)
        if why is not None:
            log.info("dead_letter_left_for_redrive", message=_message_id(message), keys=len(keys), why=why)
            return
        for key in keys:
            ledger.mark_failed(key, DEAD_LETTERED)

    return on_dead_letter


def _message_id(message: QueueMessage) -> str:
    return str(getattr(message, "message_id", ""))


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


def reopen_and_retry(
    broker: dramatiq.Broker, ledger: Ledger, dead_letter_id: str, queue: str | None = None
) -> bool:
    """Reopen the letter's firings in the ledger, then re-enqueue it; False when no such id."""
    letter = next((d for d in list_dead_letters(broker, queue) if d.id == dead_letter_id), None)
    if letter is None:
        return False
    for key in item_keys(letter):
        ledger.reopen(key)
    return retry_dead_letter(broker, dead_letter_id, letter.queue)
