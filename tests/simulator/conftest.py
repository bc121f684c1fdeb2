"""Fixtures for the simulator's own tests: an authenticated client on the served simulator."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from worker.simulator.testing import SimulatorHandle


@pytest.fixture
def client(simulator: SimulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=simulator.url, headers=simulator.headers, timeout=10) as http:
        yield http


@pytest.fixture
def anonymous(simulator: SimulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=simulator.url, timeout=10) as http:
        yield http
