"""Finding 13.3: every actor attempt has a real time limit, however the worker runs.

dramatiq's TimeLimit starts its watchdog only on `after_process_boot`, which only
dramatiq's own CLI emits: in `inboxpilot run` (and `--role worker`, `demo`), whose
workers are `dramatiq.Worker` objects in the process, no attempt was ever interrupted.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from tests.conftest import REDIS_URL
from tests.e2e._app_helpers import app_on, leader_loop, tick_and_drain, wait_for
from tests.e2e._exec_helpers import flush_redis
from tests.support.hostile_api import HostileHandle
from tests.support.hostile_loop import MATCH_OPEN, capture_logs, events
from tests.test_readme import clean_env
from worker.api.services import BULK_ACTIONS
from worker.app import App
from worker.execution.policy import exec_lock_ttl_ms
from worker.queue.broker import default_middleware
from worker.queue.middleware import ArmedTimeLimit

ROOT = Path(__file__).resolve().parents[2]


def test_an_attempt_that_outlives_the_limit_is_interrupted_and_retried(
    hostile: HostileHandle, redis_url: str, tmp_path: Path
) -> None:
    """The API trickles its answer to the bulk assign for 8 s; the limit is 1 s."""
    flush_redis(redis_url)
    conv = int(hostile.sim.new_conversation(channel="webchat")["id"])
    hostile.api.slow(BULK_ACTIONS, 8.0, method="POST", times=1)
    logs = capture_logs()
    with app_on(hostile, tmp_path, MATCH_OPEN, redis_url=redis_url, actor_time_limit_s=1) as built:
        report = tick_and_drain(built, leader_loop(built))
        (key,) = [item.key for step in report.steps for item in step.items]
        entry = built.runtime.ledger.get(key)
    assert entry is not None and entry.state == "done", entry
    # Interrupted (attempt 1 never finished), retried, and the retry read back the
    # assignment the first attempt had made: done, sent once.
    assert entry.attempts == 2
    assert hostile.api.count("POST", BULK_ACTIONS) == 1
    assert hostile.sim.conversation(conv)["owner_id"] == 201
    retried = [e for e in events(logs, "firing_executed") if e.get("outcome") == "done"]
    assert retried and retried[-1]["attempt"] == 2


def test_the_watchdog_is_armed_by_a_worker_boot_or_a_process_boot_once() -> None:
    """In-process workers emit worker_boot; dramatiq's CLI emits process_boot, then worker_boot."""
    broker = StubBroker(middleware=default_middleware(time_limit_ms=1_000))
    (limit,) = [m for m in broker.middleware if isinstance(m, ArmedTimeLimit)]
    assert not limit.armed
    broker.emit_after("process_boot")  # dramatiq's CLI, per process
    worker = dramatiq.Worker(broker, worker_threads=1)
    worker.start()  # emits worker_boot: must not start the watchdog a second time
    try:
        assert limit.armed and limit.manager.is_alive()
    finally:
        worker.stop()
        broker.close()


def test_the_item_lock_outlives_an_interrupted_attempt() -> None:
    """The lock must not expire under an attempt the limit has not yet stopped: the
    interrupt lands when a blocking socket read returns (the HTTP timeout)."""
    assert exec_lock_ttl_ms(60_000, 10.0) >= 60_000 + 10_000 + 1_000


@pytest.mark.skipif(not REDIS_URL, reason="worker processes share state through a real Redis (set REDIS_URL)")
def test_dramatiqs_own_cli_interrupts_too(hostile: HostileHandle, redis_url: str, tmp_path: Path) -> None:
    """`inboxpilot run --role worker --processes 2` hands over to dramatiq's CLI on
    worker.dramatiq_entry: its processes enforce the same limit."""
    flush_redis(redis_url)
    conv = int(hostile.sim.new_conversation(channel="webchat")["id"])
    hostile.api.slow(BULK_ACTIONS, 20.0, method="POST", times=1)
    rules = tmp_path / "rules.yaml"
    rules.write_text(MATCH_OPEN)
    with app_on(hostile, tmp_path, MATCH_OPEN, redis_url=redis_url) as built:
        report = leader_loop(built).poll_once()  # claims and enqueues on the Redis broker
        (key,) = [item.key for step in report.steps for item in step.items]
        env = clean_env(
            INBOXPILOT_API_URL=hostile.url,
            INBOXPILOT_API_TOKEN=hostile.token,
            INBOXPILOT_REDIS_URL=redis_url,
            INBOXPILOT_RULES_PATH=str(rules),
            INBOXPILOT_ACTOR_TIME_LIMIT_S="1",
            INBOXPILOT_LOG_FORMAT="json",
        )
        argv = [
            sys.executable,
            "-m",
            "worker",
            "run",
            "--role",
            "worker",
            "--processes",
            "2",
            "--threads",
            "1",
        ]
        with (tmp_path / "workers.log").open("wb") as out:
            workers = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: _state(built, key) == "done", timeout_s=60)
            finally:
                workers.send_signal(signal.SIGTERM)
                try:
                    workers.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    workers.kill()
                    workers.wait()
        entry = built.runtime.ledger.get(key)
    log_text = (tmp_path / "workers.log").read_text()
    assert entry is not None and entry.attempts == 2, log_text[-3000:]
    assert hostile.api.count("POST", BULK_ACTIONS) == 1
    assert hostile.sim.conversation(conv)["owner_id"] == 201


def _state(built: App, key: str) -> str:
    entry = built.runtime.ledger.get(key)
    return entry.state if entry is not None else ""
