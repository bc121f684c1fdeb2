"""A thread-safe token bucket that waits through an injected clock.

Each caller reserves a token under the lock (the balance may go negative) and
then sleeps outside it for as long as its reservation needs, so concurrent
threads queue fairly without holding the lock while they wait.
"""

from __future__ import annotations

import threading

from worker.clock import Clock, to_epoch


class TokenBucket:
    """At most `burst` requests at once, refilled at `rate_per_s`."""

    def __init__(self, rate_per_s: float, burst: int, clock: Clock) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = to_epoch(clock.now())
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping through the clock if none is left; returns the wait in s."""
        with self._lock:
            self._refill()
            self._tokens -= 1.0
            wait_s = -self._tokens / self.rate_per_s if self._tokens < 0 else 0.0
        if wait_s > 0:
            self._clock.sleep(wait_s)
        return wait_s

    def try_acquire(self) -> bool:
        """Take one token only if one is available now."""
        with self._lock:
            self._refill()
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def available(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens

    def _refill(self) -> None:
        now = to_epoch(self._clock.now())
        # A clock set backwards must not drain or overfill the bucket.
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
