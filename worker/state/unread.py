"""Conversations whose snapshot read failed, and since when: they stay due until read.

A conversation the poller saw changed but could not read (its messages or contact
answered 500s after the client's retries) must not wait for the next full resync:
the loop puts it here and sets a due-timer (`READ_RETRY_RULE`) so the timer pump
reads it again on a following tick, backing off while it keeps failing. A
successful read removes it and records how long it stayed unread.

Redis: ``inboxpilot:unread``, ZSET conversation id scored by the epoch of its first
failed read (kept across further failures); members leave on the next good read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import redis

from worker.clock import Clock, from_epoch, to_epoch

UNREAD_KEY = "inboxpilot:unread"
# The due-timer "rule" that only asks for a re-read (no rule has this id: ids are slugs).
READ_RETRY_RULE = "~read"
MIN_RETRY = timedelta(seconds=1)
MAX_RETRY = timedelta(seconds=60)

_READ = """
-- KEYS: unread   ARGV: now, ids...
local out = {}
for i = 2, #ARGV do
  local since = redis.call('zscore', KEYS[1], ARGV[i])
  if since then
    redis.call('zrem', KEYS[1], ARGV[i])
    table.insert(out, tostring(tonumber(ARGV[1]) - tonumber(since)))
  end
end
return out
"""


class Unread:
    """The failed-read set (see the module docstring)."""

    def __init__(self, client: redis.Redis, clock: Clock) -> None:
        self._redis = client
        self._clock = clock
        self._read = client.register_script(_READ)

    def failed(self, conversation_id: int) -> datetime:
        """Note a failed read; returns when to read it again (half its time unread, 1..60 s)."""
        now = self._clock.now()
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(UNREAD_KEY, {str(conversation_id): to_epoch(now)}, nx=True)
        pipe.zscore(UNREAD_KEY, str(conversation_id))
        _, since = pipe.execute()
        unread_for = now - from_epoch(float(since)) if since is not None else timedelta(0)
        return now + min(max(unread_for / 2, MIN_RETRY), MAX_RETRY)

    def read(self, conversation_ids: Sequence[int]) -> list[float]:
        """These were read: forget them; returns how long (s) each that was unread had waited."""
        if not conversation_ids:
            return []
        now = repr(to_epoch(self._clock.now()))
        flat = self._read(keys=[UNREAD_KEY], args=[now, *(str(c) for c in conversation_ids)])
        return [float(v.decode() if isinstance(v, bytes) else v) for v in flat]

    def oldest_s(self) -> float:
        """How long the longest-unread conversation has been waiting (0 when none)."""
        first = self._redis.zrange(UNREAD_KEY, 0, 0, withscores=True)
        if not first:
            return 0.0
        return max((self._clock.now() - from_epoch(float(first[0][1]))).total_seconds(), 0.0)
