"""Fault injection on demand: errors, commit-then-fail, a per-token 429 limit, latency.

Every roll uses one seeded RNG, so a chaos run with the same seed and the same
request sequence injects the same faults. Token buckets run on the simulator's
clock: with a `FakeClock` they refill only when the test moves time.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from worker.clock import Clock

CommitFailMode = Literal["503", "drop", "mixed"]


@dataclass(frozen=True)
class FaultConfig:
    """What to inject; all off by default."""

    error_rate: float = 0.0  # 500 GeneralError before applying
    commit_then_fail_rate: float = 0.0  # apply, then 503 or a dropped connection (writes only)
    commit_then_fail_mode: CommitFailMode = "mixed"
    rate_limit_per_s: float = 0.0  # per token; 0 = unlimited
    rate_burst: int = 10
    latency_s: float = 0.0  # added to every targeted request (real sleep: this is the server)
    paths: tuple[str, ...] = field(default_factory=tuple)  # path prefixes; empty = every API path
    # Path prefixes whose first write is always applied and answered with a fault (once each,
    # whatever the rate): a chaos run that must include a lost answer on a rare call (an upload).
    commit_then_fail_first: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in ("error_rate", "commit_then_fail_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.rate_limit_per_s < 0 or self.latency_s < 0:
            raise ValueError("rate_limit_per_s and latency_s must be >= 0")
        if self.rate_burst < 1:
            raise ValueError("rate_burst must be >= 1")
        if self.commit_then_fail_mode not in ("503", "drop", "mixed"):
            raise ValueError("commit_then_fail_mode must be 503, drop or mixed")

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "paths": list(self.paths),
            "commit_then_fail_first": list(self.commit_then_fail_first),
        }


class _Bucket:
    def __init__(self, capacity: int, now: datetime) -> None:
        self.tokens = float(capacity)
        self.stamp = now


class FaultInjector:
    """Decides, per request, which fault (if any) to inject; counts what it injected."""

    def __init__(self, clock: Clock, config: FaultConfig | None = None, seed: int = 0) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.config = config or FaultConfig()
        self._rng = random.Random(seed)
        self._buckets: dict[str, _Bucket] = {}
        self._counts: Counter[str] = Counter()
        self._forced: set[str] = set()  # commit_then_fail_first prefixes already hit

    def configure(
        self, config: FaultConfig | None = None, *, seed: int | None = None, **changes: Any
    ) -> None:
        """Replace the config (or change some fields); a seed restarts the RNG."""
        with self._lock:
            base = config or self.config
            self.config = replace(base, **changes) if changes else base
            if seed is not None:
                self._rng = random.Random(seed)
            self._buckets.clear()

    def targets(self, path: str) -> bool:
        paths = self.config.paths
        return not paths or any(path.startswith(prefix) for prefix in paths)

    def roll_error(self) -> bool:
        return self._roll(self.config.error_rate, "error")

    def roll_commit_then_fail(self, path: str = "") -> str | None:
        """None, "503" or "drop"."""
        if not self._forced_first(path) and not self._roll(self.config.commit_then_fail_rate, None):
            return None
        mode = self.config.commit_then_fail_mode
        with self._lock:
            kind = mode if mode != "mixed" else self._rng.choice(("503", "drop"))
            self._counts[f"commit_then_fail_{kind}"] += 1
        return kind

    def _forced_first(self, path: str) -> bool:
        with self._lock:
            for prefix in self.config.commit_then_fail_first:
                if path.startswith(prefix) and prefix not in self._forced:
                    self._forced.add(prefix)
                    return True
        return False

    def take_token(self, token: str) -> int | None:
        """None when allowed; else the Retry-After in whole seconds."""
        rate = self.config.rate_limit_per_s
        if rate <= 0:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()  # never keep the token itself
        now = self._clock.now()
        with self._lock:
            bucket = self._buckets.setdefault(key, _Bucket(self.config.rate_burst, now))
            elapsed = max((now - bucket.stamp).total_seconds(), 0.0)
            bucket.tokens = min(self.config.rate_burst, bucket.tokens + elapsed * rate)
            bucket.stamp = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return None
            self._counts["rate_limited"] += 1
            return max(1, math.ceil((1.0 - bucket.tokens) / rate))

    def note_latency(self) -> float:
        if self.config.latency_s > 0:
            with self._lock:
                self._counts["latency"] += 1
        return self.config.latency_s

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self, seed: int = 0) -> None:
        with self._lock:
            self.config = FaultConfig()
            self._rng = random.Random(seed)
            self._buckets.clear()
            self._counts.clear()
            self._forced.clear()

    def _roll(self, rate: float, kind: str | None) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            hit = self._rng.random() < rate
            if hit and kind:
                self._counts[kind] += 1
            return hit
