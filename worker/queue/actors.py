"""The dramatiq actors: thin wrappers that decode a step and hand it to `worker.execution.execute`.

One actor per step kind on the ``inboxpilot`` queue: ``bulk_action``,
``send_reply`` (replies and notes), ``run_automation`` and ``change_tags``. Each message carries
the step as data plus ``firing_keys=[...]`` so the LogContext middleware binds
them to every log line of the message. Retries, time limits and dead-lettering
are the broker's middleware (`worker.queue.broker`, policy in `worker.execution.policy`);
exactly-once is the ledger's. The runtime comes from the broker's `RuntimeProvider`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq

from worker.execution.execute import execute
from worker.execution.policy import MAX_RETRIES
from worker.logs import get_logger
from worker.queue.middleware import runtime_of
from worker.rules.firing import Step

log = get_logger(__name__)

QUEUE = "inboxpilot"
# Step kind -> actor name (the names the issue gives them).
ACTOR_NAMES: dict[str, str] = {
    "bulk": "bulk_action",
    "message": "send_reply",
    "automation": "run_automation",
    "tags": "change_tags",
}


class MalformedStep(ValueError):
    """A queue message whose step cannot be decoded: retrying cannot help."""


def decode(step: Mapping[str, Any]) -> Step:
    try:
        return Step.from_dict(step)
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedStep(f"cannot decode step: {exc!r}") from None


def _named(name: str, broker: dramatiq.Broker) -> Callable[..., None]:
    # dramatiq names actors after their function unless told; a distinct function
    # per actor keeps tracebacks and `repr` honest.
    def actor_fn(step: dict[str, Any], firing_keys: list[str] | None = None) -> None:
        execute(runtime_of(broker), decode(step), lambda after: send_step(broker, after))

    actor_fn.__name__ = actor_fn.__qualname__ = name
    return actor_fn


def send_step(broker: dramatiq.Broker, step: Step) -> None:
    """Queue `step` on the actor of its kind declared on `broker`."""
    name = ACTOR_NAMES.get(step.kind)
    if name is None:
        raise ValueError(f"no actor for step kind {step.kind!r}; expected one of {sorted(ACTOR_NAMES)}")
    broker.get_actor(name).send(step.to_dict(), firing_keys=[item.key for item in step.items])


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
    """Declare the actors on `broker` (not on dramatiq's global broker)."""
    by_kind = {
        kind: dramatiq.actor(
            broker=broker,
            actor_name=name,
            queue_name=QUEUE,
            max_retries=max_retries,
            throws=(MalformedStep,),
        )(_named(name, broker))
        for kind, name in ACTOR_NAMES.items()
    }
    return Actors(broker, by_kind)
