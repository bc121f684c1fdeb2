"""Helpers for tests that run the whole loop through a real dramatiq broker: an `App`
built like production on the simulator, one leader tick, then the workers drain the queue."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.dispatchers import TEST_POLL_TIMEOUT_MS
from tests.support.leading import lead
from worker.app import App
from worker.queue.actors import QUEUE
from worker.scheduling.tick import Loop, TickReport
from worker.simulator.testing import SimulatorHandle

JOIN_TIMEOUT_MS = 30_000

ASSIGN_NEW = """
rules:
  - id: assign-new
    once: per_conversation
    when: {status: open, owner: unset}
    then:
      - assign: 201
"""


@contextmanager
def app_on(
    simulator: SimulatorHandle, tmp_path: Path, rules: str = ASSIGN_NEW, **settings: object
) -> Iterator[App]:
    """`App.build` on the simulator and its clock; closed (broker included) at the end."""
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(rules)
    options = simulator.worker_settings(rules_path=rules_file, **settings)
    built = App.build(options, clock=simulator.clock)
    try:
        yield built
    finally:
        built.close()


def leader_loop(built: App) -> Loop:
    """The app's loop holding the leader lease, so it may move the watermark."""
    loop = built.loop()
    lead(loop, 30)
    return loop


def wait_for(condition: Callable[[], bool], timeout_s: float = JOIN_TIMEOUT_MS / 1000) -> None:
    """Poll `condition` until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.02)  # polling a condition with a deadline, not waiting for time to pass


def tick_and_drain(built: App, loop: Loop, threads: int = 2) -> TickReport:
    """One incremental poll, then in-process workers until every firing it claimed finished.

    `broker.join` does not wait for a message a worker holds unacked (RabbitMQ), so
    the ledger (each claimed key done or failed) is what ends the wait.
    """
    report = loop.poll_once()
    keys = report.claimed  # every action of every firing claimed, not only the queued first ones
    worker = built.worker(threads, poll_timeout_ms=TEST_POLL_TIMEOUT_MS)
    worker.start()
    try:
        built.broker.join(QUEUE, timeout=JOIN_TIMEOUT_MS)
        wait_for(lambda: all(_finished(built, key) for key in keys))
    finally:
        worker.stop()
    return report


def _finished(built: App, key: str) -> bool:
    entry = built.runtime.ledger.get(key)
    return entry is not None and entry.state in ("done", "failed")
