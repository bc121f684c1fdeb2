"""Issue 15: a long tick (a first poll reading a backlog) is said once, in our words, instead of
APScheduler's "maximum number of running instances reached" at every poll interval."""

from __future__ import annotations

import io
import json
import threading

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobEvent

from tests.e2e.conftest import RuntimeFactory
from tests.support.dispatchers import Collector
from worker.logs import configure_logging
from worker.scheduling.scheduler import SKIPPED_TICK, SchedulerService
from worker.scheduling.tick import Loop

RULES = """
rules:
  - id: assign-new
    when: {status: open, owner: unset}
    then:
      - assign: 201
"""
SKIPS_TO_SEE = 4


def test_a_long_poll_is_reported_once_and_the_skips_are_silent(make_runtime: RuntimeFactory) -> None:
    loop = Loop(make_runtime(RULES, poll_interval_s=0.05), Collector())
    running, release = threading.Event(), threading.Event()

    def slow_poll() -> None:  # the first poll of a long backlog
        running.set()
        release.wait(60)

    loop.poll_once = slow_poll  # type: ignore[method-assign]
    service = SchedulerService(loop, lease_ttl_s=5)
    skips = threading.Semaphore(0)

    def on_skip(event: JobEvent) -> None:
        if event.job_id == "poll":
            skips.release()

    service._scheduler.add_listener(on_skip, EVENT_JOB_MAX_INSTANCES)
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    service.start()
    try:
        assert running.wait(30)
        for _ in range(SKIPS_TO_SEE):  # APScheduler skipped the due poll that many times
            assert skips.acquire(timeout=30)
    finally:
        release.set()
        service.shutdown()
    text = stream.getvalue()
    events = [json.loads(line) for line in text.splitlines()]
    told = [e for e in events if e["event"] == "tick_still_running"]
    assert [e["job"] for e in told] == ["poll"], text
    assert SKIPPED_TICK not in text
