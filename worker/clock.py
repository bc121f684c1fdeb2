"""Time comes from a clock object so tests move time instead of sleeping.

The worker, the rules and the simulator all ask a `Clock` for "now". Production
uses `SystemClock`; tests share one `FakeClock` between the simulator and the
worker so an SLA deadline can be reached by `clock.advance(...)`.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Source of the current time (always timezone-aware UTC)."""

    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


SLEEP_SLICE_S = 0.25


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        # In slices: dramatiq's TimeLimit interrupts a worker thread only between Python
        # instructions, so one long time.sleep (a 30 s read backoff) would outlive the limit.
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, SLEEP_SLICE_S))


class ShiftedClock:
    """The wall clock's pace from a chosen start: the demo's business-hours morning at any hour.

    Unlike `FakeClock` it moves by itself, so a scheduler and workers that wait
    in real time see time pass as usual.
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ShiftedClock needs a timezone-aware start time")
        self._offset = start.astimezone(UTC) - datetime.now(UTC)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def sleep(self, seconds: float) -> None:
        # In slices: dramatiq's TimeLimit interrupts a worker thread only between Python
        # instructions, so one long time.sleep (a 30 s read backoff) would outlive the limit.
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, SLEEP_SLICE_S))


class FakeClock:
    """A clock that only moves when told to; `sleep` advances it instead of waiting."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(timedelta(seconds=max(seconds, 0.0)))

    def advance(self, delta: timedelta | float) -> datetime:
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        with self._lock:
            self._now += step
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when.astimezone(UTC)


def to_epoch(when: datetime) -> float:
    """Seconds since the epoch, for Redis scores."""
    return when.timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
