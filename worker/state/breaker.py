"""The loop breaker: a conversation rules change too often is taken out of automation a while.

The static check (`worker/rules/loops.py`) catches the loops a rule file shows; this
catches the rest at run time. Every firing claimed on a conversation is counted; more
than `max_firings` within `window_s` trips the breaker: no rule fires on that
conversation for `pause_s` (one warning line `loop_breaker_tripped`, the metric
`inboxpilot_loop_breaker_trips_total`, and `inboxpilot explain` says so). Defaults
(settings `breaker_*`): more than 8 firings in 10 minutes pauses it for an hour; the
shipped rules fire at most about 5 times in 10 minutes on one conversation (routing,
the AI stepping back, an SLA warning and breach, a hand-on).

Redis keys:

=====================================  ====  ===============================================
key                                    type  content / TTL
=====================================  ====  ===============================================
``inboxpilot:breaker:firings:<conv>``  ZSET  firing keys claimed on the conversation, by
                                             claim epoch; trimmed to the window; TTL window
``inboxpilot:breaker:paused``          ZSET  conversation id -> epoch automation resumes;
                                             members past their score are dropped on read
=====================================  ====  ===============================================
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import redis

from worker.clock import Clock, from_epoch, to_epoch
from worker.logs import get_logger
from worker.metrics import BREAKER_TRIPS

FIRINGS_PREFIX = "inboxpilot:breaker:firings:"
PAUSED_KEY = "inboxpilot:breaker:paused"

log = get_logger(__name__)

_RECORD = """
-- KEYS: firings, paused   ARGV: firing key, now, window start, ttl, max, resume at, conversation
redis.call('zadd', KEYS[1], ARGV[2], ARGV[1])
redis.call('zremrangebyscore', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('expire', KEYS[1], ARGV[4])
if redis.call('zcard', KEYS[1]) <= tonumber(ARGV[5]) then return 0 end
if redis.call('zscore', KEYS[2], ARGV[7]) then return 0 end
redis.call('zadd', KEYS[2], ARGV[6], ARGV[7])
return 1
"""


class Breaker:
    """Counts firings per conversation and pauses automation on the ones that loop."""

    def __init__(
        self, client: redis.Redis, clock: Clock, *, max_firings: int, window_s: float, pause_s: float
    ) -> None:
        self._redis = client
        self._clock = clock
        self.max_firings = max_firings
        self.window_s = window_s
        self.pause_s = pause_s
        self._record = client.register_script(_RECORD)

    def record(self, conversation_id: int, firing_key: str, rule_id: str) -> bool:
        """Count a claimed firing; True when it tripped the breaker (logged once, counted)."""
        now = to_epoch(self._clock.now())
        tripped = self._record(
            keys=[f"{FIRINGS_PREFIX}{conversation_id}", PAUSED_KEY],
            args=[
                firing_key,
                repr(now),
                repr(now - self.window_s),
                max(int(self.window_s), 1),
                self.max_firings,
                repr(now + self.pause_s),
                str(conversation_id),
            ],
        )
        if tripped:
            BREAKER_TRIPS.inc()
            log.warning(
                "loop_breaker_tripped",
                conversation_id=conversation_id,
                last_rule=rule_id,
                firings=self.max_firings + 1,
                window_s=self.window_s,
                paused_s=self.pause_s,
            )
        return bool(tripped)

    def paused(self, conversation_ids: Iterable[int]) -> dict[int, datetime]:
        """The conversations among `conversation_ids` taken out of automation, and until when."""
        ids = list(conversation_ids)
        if not ids:
            return {}
        now = to_epoch(self._clock.now())
        self._redis.zremrangebyscore(PAUSED_KEY, "-inf", repr(now))
        scores: Sequence[Any] = self._redis.zmscore(PAUSED_KEY, [str(i) for i in ids])  # type: ignore[assignment]
        return {i: from_epoch(float(s)) for i, s in zip(ids, scores, strict=True) if s is not None}

    def resume(self, conversation_id: int) -> None:
        """Put a conversation back under automation now (an operator fixed the rules)."""
        self._redis.zrem(PAUSED_KEY, str(conversation_id))
