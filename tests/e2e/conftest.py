"""Fixtures for whole-loop tests: a runtime pointed at the served simulator, on the
test's fake clock, with Redis real (REDIS_URL) or embedded and empty."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import fakeredis
import httpx
import pytest

from worker.runtime import Runtime
from worker.simulator.testing import SimulatorHandle
from worker.state.redis_conn import embedded_server


class CountingTransport(httpx.HTTPTransport):
    """Counts the requests the worker makes, by method and path."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        return super().handle_request(request)


RuntimeFactory = Callable[..., Runtime]


@pytest.fixture
def make_runtime(simulator: SimulatorHandle, redis_url: str, tmp_path: Path) -> Iterator[RuntimeFactory]:
    if redis_url:
        import redis

        redis.Redis.from_url(redis_url).flushdb()
    else:
        fakeredis.FakeRedis(server=embedded_server()).flushall()
    built: list[Runtime] = []

    def make(
        rules: str | Path, *, transport: httpx.BaseTransport | None = None, **settings: object
    ) -> Runtime:
        """A runtime on `rules`: YAML text, or a rule file or folder (a Path)."""
        rules_file = rules if isinstance(rules, Path) else tmp_path / "rules.yaml"
        if not isinstance(rules, Path):
            rules_file.write_text(rules)
        options = simulator.worker_settings(redis_url, rules_path=rules_file, **settings)
        runtime = Runtime.build(options, clock=simulator.clock, transport=transport)
        built.append(runtime)
        return runtime

    yield make
    for runtime in built:
        runtime.close()
