"""The shared API pause: when the API rate-limits or is down, every process backs off together.

Each process has its own token bucket, but the API's limit is per token: N
worker processes that each honour a 429 on their own keep hitting the API N
times as often. So the backoff is shared through Redis:

- a 429 pauses every process until its ``Retry-After`` (1 s when absent);
- ``FAILURE_THRESHOLD`` answers of "the API is not there" (no answer, 502, 503,
  504) within ``FAILURE_WINDOW_S`` pause every process for 1 s, doubling with
  each further failure up to ``MAX_PAUSE_S``; an ordinary answer resets it;
- while paused, `ApiClient` sends nothing: reads wait out the pause through
  their retry loop, writes raise `RateLimited` and the actor retries quietly
  after the pause (`worker.execution.execute.outcomes`).

A 500 is not counted: it usually belongs to one request, not to the API. The
pause is advisory: when Redis is unreachable it reads as "no pause" (and the
worker is not acting anyway without its ledger).

Each process reads the key at most once per ``REFRESH_S`` (not before every
request: that GET was about a tenth of a send's CPU), so a pause set by another
process is honoured within ``REFRESH_S``; a pause this process sets holds here
at once, even when Redis did not take it.

Redis keys:

================================  ======  ================================================
key                               type    content / TTL
================================  ======  ================================================
``inboxpilot:api:paused_until``   STRING  epoch seconds (float); PX = the pause, only ever
                                          moved later
``inboxpilot:api:failures``       STRING  recent "API not there" answers; TTL
                                          ``FAILURE_WINDOW_S``
================================  ======  ================================================
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from worker.clock import Clock, to_epoch
from worker.logs import get_logger

PAUSE_KEY = "inboxpilot:api:paused_until"
FAILURES_KEY = "inboxpilot:api:failures"
FAILURE_THRESHOLD = 5
FAILURE_WINDOW_S = 30
BASE_PAUSE_S = 1.0
MAX_PAUSE_S = 60.0
# How stale this process's view of another process's pause may be.
REFRESH_S = 0.05
UNAVAILABLE = frozenset({0, 502, 503, 504})

log = get_logger(__name__)

_EXTEND = """
-- KEYS: pause   ARGV: until (epoch s), ttl_ms
local current = tonumber(redis.call('get', KEYS[1]) or '0')
if tonumber(ARGV[1]) <= current then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class SharedPause:
    """`ApiGate` backed by Redis, shared by every process of one deployment."""

    def __init__(
        self,
        client: redis.Redis,
        clock: Clock,
        *,
        threshold: int = FAILURE_THRESHOLD,
        base_s: float = BASE_PAUSE_S,
        max_s: float = MAX_PAUSE_S,
        refresh_s: float = REFRESH_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or base_s <= 0 or max_s < base_s:
            raise ValueError("SharedPause needs threshold >= 1 and 0 < base_s <= max_s")
        if refresh_s < 0:
            raise ValueError(f"SharedPause needs refresh_s >= 0, got {refresh_s}")
        self._redis = client
        self._clock = clock
        self._threshold = threshold
        self._base_s = base_s
        self._max_s = max_s
        self._extend = client.register_script(_EXTEND)
        self._failing = False  # this process saw failures: reset the counter on the next success
        self._refresh_s = refresh_s
        self._monotonic = monotonic
        self._read_at: float | None = None  # monotonic time of the latest read of the key
        self._shared_until = 0.0  # epoch s: the key's value at that read (0 = no pause)
        self._own_until = 0.0  # epoch s: the latest pause this process set

    def wait_s(self) -> float:
        now = self._monotonic()
        if self._read_at is None or now - self._read_at >= self._refresh_s:
            self._read_at = now  # first: the other threads keep the cached value meanwhile
            self._shared_until = self._read_shared()
        until = max(self._shared_until, self._own_until)
        return max(0.0, until - to_epoch(self._clock.now()))

    def _read_shared(self) -> float:
        try:
            raw = self._redis.get(PAUSE_KEY)
        except redis.RedisError:
            return 0.0
        return 0.0 if raw is None else float(raw)

    def observe(self, status: int, retry_after_s: float | None) -> None:
        try:
            if status == 429:
                self.pause(retry_after_s or self._base_s, "rate_limited")
            elif status in UNAVAILABLE:
                self._failed()
            elif self._failing:
                self._failing = False
                self._redis.delete(FAILURES_KEY)
        except redis.RedisError:
            return

    def pause(self, seconds: float, reason: str) -> bool:
        """Pause every process for `seconds` (never shortens a longer pause); True when extended."""
        seconds = min(max(seconds, 0.0), self._max_s)
        until = to_epoch(self._clock.now()) + seconds
        self._own_until = max(self._own_until, until)
        extended = bool(self._extend(keys=[PAUSE_KEY], args=[repr(until), max(1, int(seconds * 1000))]))
        if extended:
            log.warning("api_paused", seconds=round(seconds, 3), reason=reason)
        return extended

    def _failed(self) -> None:
        self._failing = True
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(FAILURES_KEY)
        pipe.expire(FAILURES_KEY, FAILURE_WINDOW_S)
        failures = int(pipe.execute()[0])
        if failures >= self._threshold:
            self.pause(self._base_s * 2.0 ** (failures - self._threshold), "api_unavailable")
