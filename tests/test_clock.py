from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.clock import FakeClock, from_epoch, to_epoch


def test_fake_clock_moves_only_when_told() -> None:
    start = datetime(2026, 1, 5, 9, tzinfo=UTC)
    clock = FakeClock(start)
    assert clock.now() == start
    clock.sleep(30)
    clock.advance(timedelta(minutes=1))
    assert clock.now() == start + timedelta(seconds=90)


def test_fake_clock_rejects_naive_start() -> None:
    with pytest.raises(ValueError):
        FakeClock(datetime(2026, 1, 1))


def test_epoch_round_trip() -> None:
    when = datetime(2026, 3, 1, 12, 30, 15, tzinfo=UTC)
    assert from_epoch(to_epoch(when)) == when
