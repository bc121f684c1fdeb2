"""Per-item execution locks: two deliveries of the same item never run at once.

dramatiq redelivers a message while a task still runs, and the ledger re-drives
a slow claim; the lock makes the second delivery wait instead of acting.

==================================  ======  =====================================
key                                 type    content / TTL
==================================  ======  =====================================
``inboxpilot:exec:<item key>``      STRING  the holder's token; TTL = the lock's
                                            ``ttl_ms`` (one actor attempt + margin)
==================================  ======  =====================================
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis

EXEC_LOCK_PREFIX = "inboxpilot:exec:"
# A second delivery that finds the item busy waits at least this long.
BUSY_RETRY_MS = 2_000
BUSY_MARGIN_MS = 250

_ACQUIRE = """
-- KEYS: lock keys   ARGV: token, ttl_ms
-- Returns 0 when every key was taken, else the (1-based) index of the first busy one; then
-- none is held (those taken before it are given back in the same script).
for i, key in ipairs(KEYS) do
  if not redis.call('set', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    for j = 1, i - 1 do redis.call('del', KEYS[j]) end
    return i
  end
end
return 0
"""

_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[1] then redis.call('del', key); n = n + 1 end
end
return n
"""


class ItemBusy(Exception):
    """Another delivery holds one of the items: try again after `retry_ms`."""

    def __init__(self, key: str, retry_ms: int) -> None:
        super().__init__(f"another delivery is executing {key}")
        self.key = key
        self.retry_ms = retry_ms


@contextmanager
def item_locks(client: redis.Redis, keys: Sequence[str], ttl_ms: int) -> Iterator[None]:
    """Hold `inboxpilot:exec:<key>` for every item key, or raise `ItemBusy` when one is held."""
    token = uuid.uuid4().hex
    lock_keys = [EXEC_LOCK_PREFIX + key for key in keys]
    # One script for a step's 50 keys: one round trip, and its arguments packed once.
    busy = int(client.register_script(_ACQUIRE)(keys=lock_keys, args=[token, ttl_ms]))
    if busy:
        held = lock_keys[busy - 1]
        raise ItemBusy(held.removeprefix(EXEC_LOCK_PREFIX), busy_retry_ms(client, held, ttl_ms))
    try:
        yield
    finally:
        client.register_script(_RELEASE)(keys=lock_keys, args=[token])


def busy_retry_ms(client: redis.Redis, lock_key: str, ttl_ms: int) -> int:
    """How long a delivery that found the item busy waits before trying again.

    Twice as long as the holder has held the lock, capped at when the lock
    expires. A live holder (a duplicate delivery, a slow attempt) finishes in
    seconds, so the wait stays short; a worker killed mid-task leaves a lock
    that only its TTL ends, and retrying every 2 s spent all of dramatiq's
    retries before then: the firing was dead-lettered without ever running.
    Doubling waits it out in about five retries.
    """
    remaining_ms = max(int(client.pttl(lock_key)), 0)
    held_ms = max(ttl_ms - remaining_ms, 0)
    return max(BUSY_RETRY_MS, min(2 * held_ms, remaining_ms + BUSY_MARGIN_MS))
