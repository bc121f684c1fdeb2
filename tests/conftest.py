"""Shared fixtures.

Redis: when `REDIS_URL` is set (CI sets it) tests use that real server, on a
database flushed before each test; otherwise they use an isolated in-process
fakeredis server, so a machine with only Python runs the suite.

The suite runs on two processes (pytest-xdist, `-n 2` in pyproject's addopts;
`-n 0` runs it in one). Each xdist worker gets its own Redis database — the
URL's database plus 10 plus the worker's number, modulo 16 — so their flushes never meet;
the variable is rewritten before any test module reads it, and subprocesses
the tests start inherit it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import fakeredis
import pytest
import redis

from worker.clock import FakeClock

XDIST_DB_OFFSET = 10
REDIS_DATABASES = 16  # a default Redis server's `databases`


def _per_worker(url: str, worker: str | None) -> str:
    """`url` on this xdist worker's own database ("gw1" -> db + 11)."""
    if not url or not worker or not worker.startswith("gw"):
        return url
    parts = urlsplit(url)
    db = parts.path.strip("/")
    number = int(db) if db.isdigit() else 0
    own = (number + XDIST_DB_OFFSET + int(worker[2:])) % REDIS_DATABASES
    return urlunsplit(parts._replace(path=f"/{own}"))


REDIS_URL = _per_worker(os.environ.get("REDIS_URL", ""), os.environ.get("PYTEST_XDIST_WORKER"))
if REDIS_URL:
    os.environ["REDIS_URL"] = REDIS_URL


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


# Suites that must work on the documented record only: their simulator serves just the
# contract's conversation fields (no assigned_at, stage_entered_at, initiated_by).
STRICT_SUITES = ("e2e", "scenarios", "chaos")


def strict_api(request: pytest.FixtureRequest) -> bool:
    """Strict for the e2e, scenario and chaos suites; `@pytest.mark.lenient_api` opts a test out."""
    if request.node.get_closest_marker("lenient_api") is not None:
        return False
    return any(part in STRICT_SUITES for part in request.node.path.parts[-3:-1])


def qs_array_limit(request: pytest.FixtureRequest) -> int | None:
    """`@pytest.mark.qs_array_limit(20)`: the simulator refuses longer query arrays, as qs does."""
    marker = request.node.get_closest_marker("qs_array_limit")
    return None if marker is None else int(marker.args[0])


@pytest.fixture
def simulator(clock: FakeClock, request: pytest.FixtureRequest) -> Iterator[SimulatorHandle]:
    """An empty simulator (call `.sim.seed(n)` for data) served on a free loopback port."""
    options = {"strict": strict_api(request), "array_limit": qs_array_limit(request)}
    with served_simulator(clock, SIMULATOR_TOKEN, **options) as handle:
        yield handle


# --- the hostile API --------------------------------------------------------------------
# The simulator behind a wrapper that redirects, answers HTML, slips `null` into pages,
# pages forever, lies about totals or trickles its answers (tests/support/hostile_api.py).

from tests.support.hostile_api import HostileHandle, served_hostile_api  # noqa: E402


@pytest.fixture
def hostile(clock: FakeClock, request: pytest.FixtureRequest) -> Iterator[HostileHandle]:
    """An empty simulator behind the hostile wrapper, on a free loopback port."""
    with served_hostile_api(clock, SIMULATOR_TOKEN, array_limit=qs_array_limit(request)) as handle:
        yield handle
