from __future__ import annotations

import time

import redis

from worker.clock import FakeClock
from worker.state.lease import LeaderLease, lease_key


def wait_until(condition: object, timeout_s: float = 5.0) -> bool:
    """Poll a condition with a deadline (real Redis TTLs are real time)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return False


def pair(client: redis.Redis, clock: FakeClock, ttl_s: float = 10) -> tuple[LeaderLease, LeaderLease]:
    return LeaderLease(client, "sched", ttl_s, clock), LeaderLease(client, "sched", ttl_s, clock)


def test_only_one_leader(redis_client: redis.Redis, clock: FakeClock) -> None:
    a, b = pair(redis_client, clock)
    assert a.try_acquire()
    assert not b.try_acquire()
    assert a.is_leader and not b.is_leader
    assert a.token is not None and b.token is None
    assert a.still_leader()
    assert 0 < redis_client.pttl(lease_key("sched")) <= 10_000


def test_renew_replaces_ttl(redis_client: redis.Redis, clock: FakeClock) -> None:
    a, _ = pair(redis_client, clock)
    a.try_acquire()
    redis_client.pexpire(lease_key("sched"), 500)
    assert a.renew()
    assert redis_client.pttl(lease_key("sched")) > 5_000


def test_standby_takes_over_when_leader_stops_renewing(redis_client: redis.Redis, clock: FakeClock) -> None:
    a, b = pair(redis_client, clock)
    assert a.try_acquire()
    old_token = a.token
    redis_client.pexpire(lease_key("sched"), 1)  # the leader died: its TTL runs out
    assert wait_until(b.try_acquire)
    assert b.token is not None and old_token is not None and b.token > old_token
    assert not a.still_leader()
    assert not a.renew(), "the old leader must learn it lost the lease"
    assert not a.is_leader and a.token is None
    assert b.still_leader()


def test_short_ttl_expires_by_itself(redis_client: redis.Redis, clock: FakeClock) -> None:
    a, b = pair(redis_client, clock, ttl_s=0.05)
    assert a.try_acquire()
    assert wait_until(b.try_acquire)


def test_local_expiry_by_clock(redis_client: redis.Redis, clock: FakeClock) -> None:
    a, _ = pair(redis_client, clock)
    a.try_acquire()
    clock.advance(10.5)  # no renewal for a whole TTL: stop acting even before Redis says so
    assert not a.is_leader
    assert a.token is None
    assert not a.still_leader()


def test_release_hands_over_at_once(redis_client: redis.Redis, clock: FakeClock) -> None:
    a, b = pair(redis_client, clock)
    a.try_acquire()
    a.release()
    assert not a.is_leader
    assert b.try_acquire()
    a.release()  # releasing again (not leader) must not delete b's lease
    assert b.still_leader()


def test_stale_release_does_not_remove_new_leader(redis_client: redis.Redis, clock: FakeClock) -> None:
    a, b = pair(redis_client, clock)
    a.try_acquire()
    redis_client.pexpire(lease_key("sched"), 1)
    assert wait_until(b.try_acquire)
    a.release()
    assert b.still_leader()


def test_leader_try_acquire_renews(redis_client: redis.Redis, clock: FakeClock) -> None:
    a, _ = pair(redis_client, clock)
    a.try_acquire()
    token = a.token
    clock.advance(5)
    assert a.try_acquire()
    assert a.token == token
    clock.advance(6)
    assert a.is_leader, "renewal moved the local deadline"
