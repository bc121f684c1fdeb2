"""The scheduler's leader gating: one leader polls; a standby takes over when it goes."""

from __future__ import annotations

import io
import json

import pytest

from tests.e2e.conftest import RuntimeFactory
from tests.support.dispatchers import Collector
from worker.logs import configure_logging
from worker.scheduling.scheduler import SchedulerService
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle

RULES = """
rules:
  - id: assign-new
    when: {status: open, owner: unset}
    then:
      - assign: 201
"""


@pytest.fixture
def two_schedulers(make_runtime: RuntimeFactory) -> tuple[SchedulerService, SchedulerService]:
    first = SchedulerService(Loop(make_runtime(RULES), Collector()), lease_ttl_s=5)
    second = SchedulerService(Loop(make_runtime(RULES), Collector()), lease_ttl_s=5)
    return first, second


def test_only_the_leader_runs_gated_jobs(
    simulator: SimulatorHandle, two_schedulers: tuple[SchedulerService, SchedulerService]
) -> None:
    leader, standby = two_schedulers
    assert leader.contend()
    assert not standby.contend()
    simulator.sim.new_conversation(channel="sms")
    leader._job("poll", leader.loop.poll_once, gated=True)()
    standby._job("poll", standby.loop.poll_once, gated=True)()
    leader_steps = leader.loop.dispatcher.steps  # type: ignore[attr-defined]
    standby_steps = standby.loop.dispatcher.steps  # type: ignore[attr-defined]
    assert len(leader_steps) == 1 and standby_steps == []


def test_standby_takes_over_when_the_leader_releases(
    two_schedulers: tuple[SchedulerService, SchedulerService],
) -> None:
    leader, standby = two_schedulers
    assert leader.contend()
    assert not standby.contend()
    leader.lease.release()
    assert standby.contend()
    assert standby.lease.token is not None and standby.lease.token > 0


def test_a_failing_job_is_logged_not_raised(
    two_schedulers: tuple[SchedulerService, SchedulerService],
) -> None:
    leader, _ = two_schedulers
    assert leader.contend()

    def boom() -> None:
        raise RuntimeError("API down")

    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    leader._job("poll", boom, gated=True)()  # must not raise: the next tick retries
    failed = [json.loads(line) for line in stream.getvalue().splitlines() if "job_failed" in line]
    assert failed and failed[0]["job"] == "poll" and failed[0]["error"] == "API down"
