from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis

from worker.clock import FakeClock
from worker.state.lease import LeaderLease, lease_key
from worker.state.watermark import (
    Watermark,
    WatermarkState,
    advance_state,
    filter_new_records,
)

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@dataclass
class Rec:
    id: int
    updated_at: datetime | None


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_fresh_state_keeps_everything() -> None:
    recs = [Rec(1, at(0)), Rec(2, None)]
    assert filter_new_records(WatermarkState(), recs) == recs


def test_boundary_records_neither_lost_nor_repeated() -> None:
    page1 = [Rec(1, at(0)), Rec(2, at(5)), Rec(3, at(5))]
    state = advance_state(WatermarkState(), page1)
    assert state == WatermarkState(at(5), frozenset({2, 3}))
    # Next poll (updated_at >= 5): 2 and 3 again, plus 4 written in the same instant later.
    page2 = [Rec(2, at(5)), Rec(3, at(5)), Rec(4, at(5))]
    new = filter_new_records(state, page2)
    assert [r.id for r in new] == [4]
    state = advance_state(state, new)
    assert state == WatermarkState(at(5), frozenset({2, 3, 4}))
    # A record seen at the boundary that changes again is new once more.
    page3 = [Rec(2, at(5)), Rec(3, at(7))]
    new = filter_new_records(state, page3)
    assert [r.id for r in new] == [3]
    assert advance_state(state, new) == WatermarkState(at(7), frozenset({3}))


def test_older_and_unstamped_records() -> None:
    state = WatermarkState(at(5), frozenset({1}))
    assert [r.id for r in filter_new_records(state, [Rec(9, at(1)), Rec(8, None)])] == [8]
    assert advance_state(state, [Rec(9, at(1)), Rec(8, None)]) == state


def test_persist_fenced_by_leader_token(redis_client: redis.Redis, clock: FakeClock) -> None:
    lease = LeaderLease(redis_client, "scheduler", 10, clock)
    assert lease.try_acquire()
    wm = Watermark(redis_client)
    assert wm.load() == WatermarkState()
    assert wm.advance([Rec(1, at(0)), Rec(2, at(3))], lease.token)
    again = Watermark(redis_client)
    assert again.load() == WatermarkState(at(3), frozenset({2}))
    assert [r.id for r in again.filter_new([Rec(2, at(3)), Rec(5, at(3))])] == [5]


def test_stale_token_is_refused(redis_client: redis.Redis, clock: FakeClock) -> None:
    old = LeaderLease(redis_client, "scheduler", 10, clock)
    new = LeaderLease(redis_client, "scheduler", 10, clock)
    assert old.try_acquire()
    stale_token = old.token
    wm_old = Watermark(redis_client)
    wm_old.load()
    assert wm_old.advance([Rec(1, at(1))], stale_token)
    redis_client.delete(lease_key("scheduler"))  # the old leader's lease expired
    assert new.try_acquire()
    wm_new = Watermark(redis_client)
    wm_new.load()
    assert wm_new.advance([Rec(2, at(9))], new.token)
    # The paused ex-leader wakes up and tries to write: refused, nothing changes.
    assert not wm_old.advance([Rec(3, at(4))], stale_token)
    assert Watermark(redis_client).load() == WatermarkState(at(9), frozenset({2}))


def test_no_token_or_no_lease_writes_nothing(redis_client: redis.Redis, clock: FakeClock) -> None:
    wm = Watermark(redis_client)
    assert not wm.save(WatermarkState(at(1), frozenset({1})), None)
    assert not wm.save(WatermarkState(at(1), frozenset({1})), 1)
    assert wm.load() == WatermarkState()


def test_nothing_new_costs_no_write(redis_client: redis.Redis, clock: FakeClock) -> None:
    wm = Watermark(redis_client)
    assert wm.advance([], None), "an empty page leaves the watermark as it is"
