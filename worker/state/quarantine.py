"""Quarantine: conversations whose data broke a tick are set aside for a while, then retried.

A conversation whose snapshot cannot be read for a reason retrying will not fix
(a malformed message list, a record the models reject) or whose evaluation
raised is put in quarantine: the loop skips it until `ttl_s` has passed, then
tries again (and quarantines it again if it still fails). One poisoned
conversation therefore costs one error line per period, never the whole tick.
Transient failures (5xx, timeouts, 429) are not quarantined: the next tick
simply retries them.

Redis keys:

==============================  ====  =====================================================
key                             type  content / TTL
==============================  ====  =====================================================
``inboxpilot:quarantine``       ZSET  member = conversation id, score = release epoch;
                                      members past their score are dropped on every read
==============================  ====  =====================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import redis

from worker.api.errors import ApiError
from worker.api.models import Conversation
from worker.clock import Clock, to_epoch
from worker.logs import get_logger
from worker.metrics import QUARANTINED

QUARANTINE_KEY = "inboxpilot:quarantine"
DEFAULT_QUARANTINE_S = 300.0
MAX_REASON_CHARS = 300

log = get_logger(__name__)


def is_poison(exc: BaseException) -> bool:
    """True for failures a retry cannot fix (bad data), False for transient ones."""
    if isinstance(exc, ApiError):
        return not exc.retryable
    return True


class Quarantine:
    """The quarantined conversation ids, shared by every scheduler through Redis."""

    def __init__(self, client: redis.Redis, clock: Clock, ttl_s: float = DEFAULT_QUARANTINE_S) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self._redis = client
        self._clock = clock
        self.ttl_s = ttl_s

    def add(self, conversation_id: int, reason: str) -> None:
        now = to_epoch(self._clock.now())
        self._redis.zadd(QUARANTINE_KEY, {str(conversation_id): now + self.ttl_s})
        log.error(
            "conversation_quarantined",
            conversation_id=conversation_id,
            reason=reason[:MAX_REASON_CHARS],
            retry_in_s=self.ttl_s,
        )
        self._publish()

    def admit(self, conversations: Sequence[Conversation]) -> list[Conversation]:
        """The conversations not in quarantine (expired entries are released first)."""
        held = self.held()
        if not held:
            return list(conversations)
        kept = [c for c in conversations if c.id not in held]
        if len(kept) < len(conversations):
            log.info("quarantined_skipped", count=len(conversations) - len(kept))
        return kept

    def held(self) -> set[int]:
        """Conversation ids in quarantine now."""
        self._redis.zremrangebyscore(QUARANTINE_KEY, "-inf", to_epoch(self._clock.now()))
        members = cast(list[bytes], self._redis.zrange(QUARANTINE_KEY, 0, -1))
        held = {int(member) for member in members}
        QUARANTINED.set(len(held))
        return held

    def release(self, conversation_id: int) -> bool:
        removed = bool(self._redis.zrem(QUARANTINE_KEY, str(conversation_id)))
        self._publish()
        return removed

    def _publish(self) -> None:
        QUARANTINED.set(int(self._redis.zcard(QUARANTINE_KEY)))
