from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import redis

from worker.clock import FakeClock
from worker.state.timers import DueTimer, DueTimers


def test_schedule_and_pop_due(redis_client: redis.Redis, clock: FakeClock) -> None:
    timers = DueTimers(redis_client)
    now = clock.now()
    timers.schedule("sla", 1, now + timedelta(seconds=30))
    timers.schedule("followup", 1, now + timedelta(seconds=10))
    timers.schedule("sla", 2, now + timedelta(seconds=20))
    assert len(timers) == 3
    assert timers.pop_due(now) == []
    popped = timers.pop_due(now + timedelta(seconds=25))
    assert popped == [
        DueTimer("followup", 1, now + timedelta(seconds=10)),
        DueTimer("sla", 2, now + timedelta(seconds=20)),
    ]
    assert timers.pop_due(now + timedelta(seconds=25)) == []
    assert timers.for_conversation(1) == {"sla"}
    assert timers.for_conversation(2) == set()


def test_reschedule_moves_the_timer(redis_client: redis.Redis, clock: FakeClock) -> None:
    timers = DueTimers(redis_client)
    now = clock.now()
    timers.schedule("sla", 1, now + timedelta(seconds=10))
    timers.schedule("sla", 1, now + timedelta(seconds=60))
    assert len(timers) == 1
    assert timers.due_at("sla", 1) == now + timedelta(seconds=60)
    assert timers.pop_due(now + timedelta(seconds=30)) == []


def test_cancel_and_cancel_conversation(redis_client: redis.Redis, clock: FakeClock) -> None:
    timers = DueTimers(redis_client)
    due = clock.now()
    for rule in ("sla", "followup", "nudge"):
        timers.schedule(rule, 5, due)
    timers.schedule("followup", 6, due)
    assert timers.cancel("nudge", 5)
    assert not timers.cancel("nudge", 5)
    assert timers.cancel_conversation(5, except_rules=["sla"]) == 1
    assert timers.for_conversation(5) == {"sla"}
    assert timers.due_at("followup", 6) == due, "other conversations keep their timers"
    assert timers.cancel_conversation(5) == 1
    assert [t.conversation_id for t in timers.pop_due(due)] == [6]


def test_backlog_lateness_next_due(redis_client: redis.Redis, clock: FakeClock) -> None:
    timers = DueTimers(redis_client)
    now = clock.now()
    assert timers.lateness(now) == 0.0 and timers.next_due() is None
    timers.schedule("a", 1, now - timedelta(seconds=3))
    timers.schedule("a", 2, now - timedelta(seconds=1))
    timers.schedule("a", 3, now + timedelta(seconds=5))
    assert timers.backlog(now) == 2
    assert timers.lateness(now) == pytest.approx(3.0)
    assert timers.next_due() == now - timedelta(seconds=3)


def test_bad_rule_id_is_refused(redis_client: redis.Redis, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="rule id"):
        DueTimers(redis_client).schedule("a|b", 1, clock.now())


def test_two_pumps_never_pop_the_same_timer(redis_client: redis.Redis, clock: FakeClock) -> None:
    timers = DueTimers(redis_client)
    now = clock.now()
    timers.schedule_many(("r", i, now) for i in range(2000))
    popped: list[list[DueTimer]] = [[], []]
    barrier = threading.Barrier(2)

    def pump(slot: int) -> None:
        mine = DueTimers(redis_client)
        barrier.wait()
        while batch := mine.pop_due(now, limit=50):
            popped[slot].extend(batch)

    threads = [threading.Thread(target=pump, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [t.conversation_id for t in popped[0] + popped[1]]
    assert sorted(ids) == list(range(2000))


@pytest.mark.slow
def test_hundred_thousand_timers(redis_client: redis.Redis, clock: FakeClock) -> None:
    timers = DueTimers(redis_client)
    now = clock.now()
    count = timers.schedule_many(("sla", i, now + timedelta(seconds=i % 500)) for i in range(100_000))
    assert count == 100_000 and len(timers) == 100_000
    assert timers.backlog(now + timedelta(seconds=249)) == 50_000
    total = 0
    while batch := timers.pop_due(now + timedelta(seconds=249), limit=5000):
        total += len(batch)
    assert total == 50_000
    assert len(timers) == 50_000
    assert timers.cancel_conversation(499) == 1


def test_replace_sets_exactly_the_given_timers_per_conversation(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    timers = DueTimers(redis_client)
    soon, later = clock.now() + timedelta(minutes=5), clock.now() + timedelta(hours=1)
    timers.schedule("sla", 1, soon)
    timers.schedule("nudge", 1, soon)
    timers.schedule("sla", 2, soon)
    timers.replace({1: {"sla": later, "close": later}, 2: {}, 3: {"nudge": soon}})
    assert timers.for_conversation(1) == {"sla", "close"}
    assert timers.due_at("sla", 1) == later and timers.due_at("nudge", 1) is None
    assert timers.for_conversation(2) == set()
    assert timers.due_at("nudge", 3) == soon
    timers.replace({})  # nothing to do, no round trip
    assert len(timers) == 3
