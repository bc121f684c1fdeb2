"""Shared fixtures.

Redis: when `REDIS_URL` is set (CI sets it) tests use that real server, on a
database flushed before each test; otherwise they use an isolated in-process
fakeredis server, so a machine with only Python runs the suite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from worker.clock import FakeClock

REDIS_URL = os.environ.get("REDIS_URL", "")


@pytest.fixture
def redis_url() -> str:
    """The real Redis URL for this run, or "" for the embedded default."""
    return REDIS_URL


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """A bytes-mode Redis client on an empty database."""
    if REDIS_URL:
        client: redis.Redis = redis.Redis.from_url(REDIS_URL)
        client.flushdb()
    else:
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield client
    if REDIS_URL:
        client.flushdb()
    client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --- simulator -------------------------------------------------------------------------
# The Conversations API simulator served over real loopback HTTP, one per test,
# sharing the test's FakeClock so moving time moves the API's time too.

from worker.simulator.testing import SimulatorHandle, served_simulator  # noqa: E402

SIMULATOR_TOKEN = "test-simulator-token"


@pytest.fixture
def simulator(clock: FakeClock) -> Iterator[SimulatorHandle]:
    """An empty simulator (call `.sim.seed(n)` for data) served on a free loopback port."""
    with served_simulator(clock, SIMULATOR_TOKEN) as handle:
        yield handle


# --- the hostile API --------------------------------------------------------------------
# The simulator behind a wrapper that redirects, answers HTML, slips `null` into pages,
# pages forever, lies about totals or trickles its answers (tests/support/hostile_api.py).

from tests.support.hostile_api import HostileHandle, served_hostile_api  # noqa: E402


@pytest.fixture
def hostile(clock: FakeClock) -> Iterator[HostileHandle]:
    """An empty simulator behind the hostile wrapper, on a free loopback port."""
    with served_hostile_api(clock, SIMULATOR_TOKEN) as handle:
        yield handle
