"""Count round trips to Redis (single commands and whole pipelines) while a test runs."""

from __future__ import annotations

import pytest
import redis


def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every round trip to Redis from now on: single commands and whole pipelines."""
    trips: list[str] = []
    single = redis.Redis.execute_command
    whole = redis.client.Pipeline.execute
    immediate = redis.client.Pipeline.immediate_execute_command

    def count_single(self: redis.Redis, *args: object, **kw: object) -> object:
        trips.append(str(args[0]))
        return single(self, *args, **kw)  # type: ignore[arg-type]

    def count_pipeline(self: redis.client.Pipeline, *args: object, **kw: object) -> object:
        trips.append("pipeline")
        return whole(self, *args, **kw)  # type: ignore[arg-type]

    def count_immediate(self: redis.client.Pipeline, *args: object, **kw: object) -> object:
        trips.append(str(args[0]))
        return immediate(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(redis.Redis, "execute_command", count_single)
    monkeypatch.setattr(redis.client.Pipeline, "execute", count_pipeline)
    monkeypatch.setattr(redis.client.Pipeline, "immediate_execute_command", count_immediate)
    return trips
