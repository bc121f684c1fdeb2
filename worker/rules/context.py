"""What a condition sees: the snapshot's records and `now` (no I/O, no clocks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import NamedTuple

from worker.api.models import Contact, Conversation, Message


def utc(t: datetime | None) -> datetime | None:
    """Records may carry naive timestamps; the API speaks UTC."""
    if t is None or t.tzinfo is not None:
        return t
    return t.replace(tzinfo=UTC)


def iso(t: datetime | None) -> str:
    """A stable text for an instant: UTC, ISO 8601 (used in firing keys and reasons)."""
    t = utc(t)
    return "none" if t is None else t.astimezone(UTC).isoformat()


Interval = tuple[datetime, datetime | None]  # an SLA pause: start, end (None: still paused)
Pauses = Mapping[str, Sequence[Interval]]  # SLA policy id -> the pauses the worker recorded
NO_PAUSES: Pauses = MappingProxyType({})


class Outcome(NamedTuple):
    """A condition's verdict and the value it looked at, for `explain`."""

    value_seen: str
    result: bool


class EvalContext:
    """One conversation at one instant; built once per evaluation, shared by all rules."""

    __slots__ = ("_last_inbound", "contact", "conv", "messages", "now", "pauses")

    def __init__(
        self,
        conv: Conversation,
        now: datetime,
        messages: Sequence[Message] | None = None,
        contact: Contact | None = None,
        pauses: Pauses = NO_PAUSES,
    ) -> None:
        self.conv = conv
        self.now = now
        self.messages = messages
        self.contact = contact
        self.pauses = pauses
        self._last_inbound: Message | bool | None = False  # False: not computed yet

    def at(self, now: datetime) -> EvalContext:
        """The same records seen at another instant (used to find due times)."""
        return EvalContext(self.conv, now, self.messages, self.contact, self.pauses)

    def last_inbound_message(self) -> Message | None:
        if self._last_inbound is False:
            inbound = [m for m in self.messages or () if m.direction == "inbound"]
            self._last_inbound = max(
                inbound, key=lambda m: utc(m.created_at) or datetime.min.replace(tzinfo=UTC), default=None
            )
        return self._last_inbound if isinstance(self._last_inbound, Message) else None
