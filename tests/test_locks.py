"""Per-item execution locks: all of a step's items or none, in one round trip."""

from __future__ import annotations

import pytest
import redis

from tests.support.redis_trips import round_trips
from worker.state.locks import EXEC_LOCK_PREFIX, ItemBusy, item_locks


def test_a_busy_item_gives_back_the_ones_taken_before_it(redis_client: redis.Redis) -> None:
    redis_client.set(EXEC_LOCK_PREFIX + "b", "someone-else", px=60_000)
    with pytest.raises(ItemBusy) as busy, item_locks(redis_client, ["a", "b", "c"], 60_000):
        pytest.fail("entered although 'b' is held")
    assert busy.value.key == "b"
    assert not redis_client.exists(EXEC_LOCK_PREFIX + "a") and not redis_client.exists(EXEC_LOCK_PREFIX + "c")
    assert redis_client.get(EXEC_LOCK_PREFIX + "b") == b"someone-else"


def test_a_step_takes_its_locks_in_one_round_trip(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"r:{n}:c#0" for n in range(50)]
    with item_locks(redis_client, keys[:1], 60_000):
        pass  # scripts loaded once per process
    trips = round_trips(monkeypatch)
    with item_locks(redis_client, keys, 60_000):
        assert len(trips) == 1, trips
        assert all(redis_client.exists(EXEC_LOCK_PREFIX + key) for key in keys)
    assert not any(redis_client.exists(EXEC_LOCK_PREFIX + key) for key in keys)
