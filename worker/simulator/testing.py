"""A served simulator as tests and demos hold it: url, token, the `Simulator` and its clock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from worker.clock import FakeClock
from worker.config import Settings, load_settings
from worker.simulator.server import serve
from worker.simulator.simulator import Simulator


@dataclass(frozen=True)
class SimulatorHandle:
    """What the `simulator` fixture yields."""

    url: str
    token: str
    sim: Simulator
    clock: FakeClock

    def __repr__(self) -> str:  # keep the token out of test output
        return f"SimulatorHandle(url={self.url!r})"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def worker_settings(self, redis_url: str = "", **overrides: Any) -> Settings:
        """Worker settings pointed at this simulator; the client's rate limit is lifted for tests."""
        options: dict[str, Any] = {
            "api_url": self.url,
            "api_token": self.token,
            "redis_url": redis_url,
            "rate_limit_per_s": 10_000,
            "rate_burst": 10_000,
            **overrides,
        }
        return load_settings(**options)


@contextmanager
def served_simulator(clock: FakeClock, token: str, **options: object) -> Iterator[SimulatorHandle]:
    """A `Simulator` on `clock`, served on a free loopback port until the block ends."""
    sim = Simulator(clock=clock, token=token, **options)  # type: ignore[arg-type]
    with serve(sim.app) as server:
        yield SimulatorHandle(url=server.url, token=token, sim=sim, clock=clock)
