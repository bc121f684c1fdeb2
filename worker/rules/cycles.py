"""Where a reply cycle and a follow-up sequence start, read from a snapshot (pure).

- A **response cycle** opens with the first customer message after the team's
  last reply and closes with the team's next reply. Its start is exact only
  with messages loaded; without them (or when the opener is older than the 50
  messages read) the latest inbound time stands in, so a deadline can only come
  late, never early.
- A **follow-up anchor** is the team reply a follow-up sequence counts silence
  from: the latest reply a person sent after the customer's last message
  (`sender_type: user`, which the simulator sets; the contract does not promise
  it), else the first reply after that message. The worker's own follow-ups are
  therefore never an anchor: a sequence cannot restart itself, while a person's
  new message does restart it. No reply after the customer's last message: no
  anchor (nothing to follow up, nothing to close).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple

from worker.api.models import Conversation, Message
from worker.rules.context import EvalContext, utc

_MIN = datetime.min.replace(tzinfo=UTC)
HUMAN_SENDERS = frozenset({"user"})


def _created(m: Message) -> datetime:
    return utc(m.created_at) or _MIN


def _replies(messages: Iterable[Message]) -> list[Message]:
    """Customer-facing team messages (notes are not replies), oldest first."""
    out = [m for m in messages if m.direction == "outbound" and m.message_type != "note"]
    return sorted(out, key=_created)


def response_cycle_start(ctx: EvalContext) -> datetime | None:
    """Start of the open response cycle (the customer waits for the team), else None."""
    conv = ctx.conv
    inbound, outbound = utc(conv.last_inbound_at), utc(conv.last_outbound_at)
    if inbound is None or (outbound is not None and outbound >= inbound):
        return None
    if ctx.messages is None:
        return inbound
    after = [
        _created(m)
        for m in ctx.messages
        if m.direction == "inbound" and (outbound is None or _created(m) > outbound)
    ]
    return min(after, default=inbound)


def followup_anchor(ctx: EvalContext) -> datetime | None:
    """The team reply a follow-up sequence counts from (see the module docstring)."""
    if ctx.messages is None:
        return None
    inbound = utc(ctx.conv.last_inbound_at)
    replies = [m for m in _replies(ctx.messages) if inbound is None or _created(m) > inbound]
    if not replies:
        return None
    human = [m for m in replies if getattr(m, "sender_type", None) in HUMAN_SENDERS]
    return _created(human[-1] if human else replies[0])


class MessageWindow(NamedTuple):
    """The messages a snapshot holds: created after `start` (at or after unless `strict`); None: all."""

    start: datetime | None
    strict: bool = False

    def holds(self, created_at: datetime | None) -> bool:
        at = utc(created_at)
        if self.start is None or at is None:
            return True
        return at > self.start if self.strict else at >= self.start


def messages_needed_since(conversation: Conversation, customer_text: bool = True) -> MessageWindow:
    """The messages any condition reads; `start` None: every message (no customer message yet).

    What the conditions read from messages: the customer's last message (created
    at `last_inbound_at`; only `message_text` reads it: `customer_text`), the
    customer messages after the team's last reply (the response cycle's opener)
    and the team replies after the customer's last message (the follow-up
    anchor). All of them are created after `last_outbound_at` when the customer
    wrote last, else at (or, without `customer_text`, after) `last_inbound_at`.
    The snapshot reader reads exactly that window.
    """
    inbound, outbound = utc(conversation.last_inbound_at), utc(conversation.last_outbound_at)
    if inbound is None:
        return MessageWindow(None)
    if outbound is not None and outbound < inbound:
        return MessageWindow(outbound, strict=True)
    return MessageWindow(inbound, strict=not customer_text)
