"""What the worker itself wrote into a conversation, so the loop does not read it back.

Every reply the executor sends bumps the conversation's `updated_at` and its
`last_outbound_at`/`last_message_at`, so the next poll would re-read that
conversation's messages only to find our own message. The executor records
each sent message with the message fields the conversation showed at its
re-check (`before`); the snapshot reader (`worker/scheduling/snapshots.py`)
extends its cached messages with it when the cached state is exactly that
`before` and the record now shows exactly our message as the newest.

Limit: a person's reply made in the milliseconds between the executor's
re-check read and its send is hidden behind ours until the conversation's
message fields move again (a customer message always moves `last_inbound_at`,
so only a team reply can hide this way).

======================================  ====  ============================================
key                                     type  content / TTL
======================================  ====  ============================================
``inboxpilot:own:<conv_id>``            LIST  JSON ``{"before": [3 times], "message": {...}}``
                                              oldest first, at most 20; TTL 1 h
======================================  ====  ============================================
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worker.api.models import Conversation, Message
from worker.rules.context import iso

KEY_PREFIX = "inboxpilot:own:"
TTL_S = 3600
MAX_KEPT = 20

MessageState = tuple[str, str, str]
"""A conversation's message fields: last_inbound_at, last_outbound_at, last_message_at (ISO)."""


def message_state(conversation: Conversation) -> MessageState:
    """The fields that move when a message is added (notes move none of them)."""
    c = conversation
    return (iso(c.last_inbound_at), iso(c.last_outbound_at), iso(c.last_message_at))


@dataclass(frozen=True)
class OwnWrite:
    before: MessageState
    message: Message

    def after(self) -> MessageState:
        """The state our message leaves: a note changes nothing, a reply is the newest outbound."""
        if self.message.message_type == "note" or self.message.direction != "outbound":
            return self.before
        at = iso(self.message.created_at)
        return (self.before[0], at, at)


# One script call per step instead of a pipeline of 3 commands per message: redis-py's
# per-command packing was ~1 ms of worker CPU per step of 50 (0.2 ms as one call).
_RECORD = """
-- KEYS: one list per message   ARGV: max kept, ttl (s), then one entry per key
local kept, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('rpush', key, ARGV[i + 2])
  redis.call('ltrim', key, -kept, -1)
  redis.call('expire', key, ttl)
end
return #KEYS
"""


class OwnWrites:
    """Records and reads the worker's own messages (see the module docstring)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._record = client.register_script(_RECORD)

    def record(self, items: Sequence[tuple[Conversation, Message]]) -> None:
        """After sends: each message with the state its conversation showed before it (one round trip)."""
        if not items:
            return
        keys, entries = [], []
        for conversation, message in items:
            keys.append(KEY_PREFIX + str(conversation.id))
            entry = {"before": list(message_state(conversation)), "message": _raw(message)}
            entries.append(json.dumps(entry, separators=(",", ":")))
        self._record(keys=keys, args=[MAX_KEPT, TTL_S, *entries])

    def read(self, conversation_ids: Sequence[int]) -> dict[int, list[OwnWrite]]:
        """Recorded writes per conversation, oldest first (one round trip)."""
        if not conversation_ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for cid in conversation_ids:
            pipe.lrange(KEY_PREFIX + str(cid), 0, -1)
        out: dict[int, list[OwnWrite]] = {}
        for cid, raws in zip(conversation_ids, pipe.execute(), strict=True):
            writes = [w for w in (_decode(raw) for raw in raws) if w is not None]
            if writes:
                out[cid] = writes
        return out


def _raw(message: Message) -> dict[str, Any]:
    return message.model_dump(mode="json", by_alias=True)


def _decode(raw: bytes | str) -> OwnWrite | None:
    try:
        data = json.loads(raw)
        before = data["before"]
        if not (isinstance(before, list) and len(before) == 3):
            return None
        return OwnWrite(
            (str(before[0]), str(before[1]), str(before[2])), Message.model_validate(data["message"])
        )
    except (ValueError, TypeError, KeyError):
        return None  # a damaged entry: the reader falls back to reading the messages
