"""Token bucket: burst, refill, waiting through the injected clock, thread safety."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from worker.api.ratelimit import TokenBucket
from worker.clock import FakeClock


def test_burst_is_free_then_waits_at_the_rate(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=5, burst=3, clock=clock)
    start = clock.now()
    waits = [bucket.acquire() for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(0.2)
    assert clock.now() - start == timedelta(seconds=0.4)


def test_refills_with_time_up_to_burst(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=2, burst=2, clock=clock)
    assert bucket.try_acquire() and bucket.try_acquire()
    assert not bucket.try_acquire()
    clock.advance(0.5)
    assert bucket.try_acquire()
    clock.advance(3600)
    assert bucket.available() == 2.0


def test_clock_set_backwards_neither_drains_nor_fills(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=1, burst=1, clock=clock)
    assert bucket.try_acquire()
    clock.set(clock.now() - timedelta(hours=1))
    assert not bucket.try_acquire()


def test_threads_share_tokens_without_losing_any(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=1000, burst=10, clock=clock)
    waits: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(25):
            wait = bucket.acquire()
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(waits) == 100
    # exactly the burst went through without waiting; every other call reserved a slot
    assert sum(1 for w in waits if w == 0.0) >= 10
    assert sum(1 for w in waits if w > 0) >= 1


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_bad_arguments_fail_early(clock: FakeClock, rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, clock)
