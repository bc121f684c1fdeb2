"""Which firing each message we found or sent belongs to, so one read-back never serves two.

Two situations of one rule often send the same text (a note per customer message).
When the first one's send goes out late, the second one's read-back would find it
and count it as its own, and the second note would never be sent. So every message
a firing sends or finds in a read-back is attributed to that firing's item, first
come first served, and a read-back counts only a message that is free or already its own.

Redis: ``inboxpilot:sent:<conversation id>``, HASH message id -> item key, TTL ``ttl_s``
(the ledger's: an attribution matters as long as the firings it separates are remembered).
After a Redis that lost its data every message is free again: the read-back then
behaves as it did without attribution (a repeat is still excluded; a late send of an
earlier situation may again satisfy a later one).
"""

from __future__ import annotations

import redis

PREFIX = "inboxpilot:sent:"

_ATTRIBUTE_IF_FREE = """
-- KEYS: the conversation's hash   ARGV: message id, item key, ttl
local owner = redis.call('hget', KEYS[1], ARGV[1])
if owner and owner ~= ARGV[2] then return 0 end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('expire', KEYS[1], ARGV[3])
return 1
"""


class SentMessages:
    """Message id -> the item key it answers, per conversation."""

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        if ttl_s <= 0:
            raise ValueError("SentMessages needs ttl_s > 0")
        self._redis = client
        self._ttl_s = ttl_s
        self._if_free = client.register_script(_ATTRIBUTE_IF_FREE)

    def attribute(self, conversation_id: int, message_id: str, item_key: str) -> None:
        """Our send of `message_id` answered `item_key` (the API said so)."""
        key = f"{PREFIX}{conversation_id}"
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(key, message_id, item_key)
        pipe.expire(key, self._ttl_s)
        pipe.execute()

    def attribute_if_free(self, conversation_id: int, message_id: str, item_key: str) -> bool:
        """Count `message_id` as `item_key`'s unless another item already did; True when it is ours."""
        return bool(
            self._if_free(keys=[f"{PREFIX}{conversation_id}"], args=[message_id, item_key, self._ttl_s])
        )
