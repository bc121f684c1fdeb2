"""The dramatiq actors: thin wrappers that decode a step and hand it to `worker.execution.execute`.

Three actors on the ``inboxpilot`` queue, one per step kind: ``bulk_action``,
``send_reply`` (replies and notes) and ``run_automation``. Each message carries
the step as data plus ``firing_keys=[...]`` so the LogContext middleware binds
them to every log line of the message. Retries, time limits and dead-lettering
are the broker's middleware (`worker.queue.broker`); exactly-once is the ledger's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.errors import Retry

from worker.api.errors import ApiError
from worker.execution import execute as execution
from worker.logs import get_logger
from worker.queue.broker import MAX_RETRIES
from worker.runtime import get_runtime
from worker.scheduling.planning import Step

log = get_logger(__name__)

QUEUE = "inboxpilot"
DEAD_LETTERED = "dead_lettered"
# Step kind -> actor name (the names the issue gives them).
ACTOR_NAMES: dict[str, str] = {
    "bulk": "bulk_action",
    "message": "send_reply",
    "automation": "run_automation",
}


class MalformedStep(ValueError):
    """A queue message whose step cannot be decoded: retrying cannot help."""


def decode(step: Mapping[str, Any]) -> Step:
    try:
        return Step.from_dict(step)
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedStep(f"cannot decode step: {exc!r}") from None


def perform(step: dict[str, Any], firing_keys: list[str] | None = None) -> None:
    """The body of every actor: decode, execute with this process's runtime."""
    execution.execute(get_runtime(), decode(step))


def _named(name: str) -> Callable[..., None]:
    # dramatiq names actors after their function unless told; a distinct function
    # per actor keeps tracebacks and `repr` honest.
    def actor_fn(step: dict[str, Any], firing_keys: list[str] | None = None) -> None:
        perform(step, firing_keys)

    actor_fn.__name__ = actor_fn.__qualname__ = name
    return actor_fn


@dataclass(frozen=True)
class Actors:
    """The declared actors of one broker, and how to send steps to them."""

    broker: dramatiq.Broker
    by_kind: Mapping[str, dramatiq.Actor[..., None]]

    @property
    def bulk_action(self) -> dramatiq.Actor[..., None]:
        return self.by_kind["bulk"]

    @property
    def send_reply(self) -> dramatiq.Actor[..., None]:
        return self.by_kind["message"]

    @property
    def run_automation(self) -> dramatiq.Actor[..., None]:
        return self.by_kind["automation"]

    def enqueue(self, step: Step) -> None:
        """Queue `step` on the actor of its kind."""
        actor = self.by_kind.get(step.kind)
        if actor is None:
            raise ValueError(f"no actor for step kind {step.kind!r}; expected one of {sorted(self.by_kind)}")
        actor.send(step.to_dict(), firing_keys=[item.key for item in step.items])


def declare_actors(broker: dramatiq.Broker, *, max_retries: int = MAX_RETRIES) -> Actors:
    """Declare the three actors on `broker` (not on dramatiq's global broker)."""
    by_kind = {
        kind: dramatiq.actor(
            broker=broker,
            actor_name=name,
            queue_name=QUEUE,
            max_retries=max_retries,
            throws=(MalformedStep,),
        )(_named(name))
        for kind, name in ACTOR_NAMES.items()
    }
    return Actors(broker, by_kind)


def on_dead_letter(message: MessageProxy) -> None:
    """`DeadLetterNotice` callback: the message's items end as failed "dead_lettered".

    A message dropped without an error (AgeLimit: it waited too long on the
    queue) is not a failed firing: its items stay pending and the ledger
    re-drives them with fresh state. Nor is one whose last error was transient
    (the API down or rate-limiting for longer than the retries last, Redis
    away, the item busy): failing it would lose a firing that an outage merely
    delayed; the re-drive tries again later, up to the ledger's re-drive limit.
    """
    keys = _item_keys(message)
    why = left_for_redrive(message._exception)
    if why is not None:
        log.info("dead_letter_left_for_redrive", message_id=message.message_id, keys=len(keys), why=why)
        return
    try:
        ledger = get_runtime().ledger
    except RuntimeError:
        log.warning("dead_letter_not_recorded", message_id=message.message_id, reason="no runtime")
        return
    for key in keys:
        ledger.mark_failed(key, DEAD_LETTERED)


def left_for_redrive(exception: BaseException | None) -> str | None:
    """Why a dead letter's items stay pending for the ledger's re-drive, or None to fail them."""
    if exception is None:
        return "age_limit"
    if isinstance(exception, Retry | redis.RedisError):
        return "transient"
    if isinstance(exception, ApiError) and exception.retryable:
        return "transient"
    return None


def _item_keys(message: MessageProxy) -> list[str]:
    step = message.args[0] if message.args else message.kwargs.get("step")
    if isinstance(step, Mapping):
        items = step.get("items") or []
        keys = [str(i["key"]) for i in items if isinstance(i, Mapping) and "key" in i]
        if keys:
            return keys
    return [str(k) for k in message.kwargs.get("firing_keys") or []]
