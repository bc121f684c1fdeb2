"""Issue 17.5: with a backlog, `inboxpilot run` exits on SIGTERM within the README's grace.

A real subprocess against the served (strict) simulator: a backlog of queued notes
that the worker threads work through slowly, while the scheduler's tick reads a
new page of conversations whose messages answer slowly. SIGTERM must stop both at
once: the tick ends at its next conversation, the worker finishes the message in
hand and takes no other, and what was not run stays queued for the next process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import dramatiq
import redis

from tests.test_readme import clean_env
from worker.api.services import SEND_PATHS
from worker.queue.dead_letters import item_keys
from worker.simulator.testing import SimulatorHandle
from worker.state.ledger import ENTRY_PREFIX, REDRIVE_KEY

ROOT = Path(__file__).resolve().parents[2]
# README, "Deploying": terminationGracePeriodSeconds >= 80 s covers any backlog.
GRACE_S = 80.0
STARTUP_TIMEOUT_S = 90.0
SLOW_READ_S = 5.0
BACKLOG = 50
NOTE = """
rules:
  - id: refund-note
    when: {status: open, message_text: refund}
    then: [{note: "refund asked"}]
"""
MESSAGES = "/conversation-messages-"
QUEUED = "dramatiq:inboxpilot.msgs"
DELAYED = "dramatiq:inboxpilot.DQ.msgs"


def _wait(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.1)  # polling a condition with a deadline, not waiting for time to pass


def test_sigterm_with_a_backlog_exits_within_the_grace(
    simulator: SimulatorHandle, redis_url: str, tmp_path: Path
) -> None:
    sim = simulator.sim
    for _ in range(BACKLOG):
        sim.new_conversation(channel="sms", text="refund please")
    rules = tmp_path / "rules.yaml"
    rules.write_text(NOTE)
    if redis_url:
        redis.Redis.from_url(redis_url).flushdb()
    env = clean_env(
        INBOXPILOT_API_URL=simulator.url,
        INBOXPILOT_API_TOKEN=simulator.token,
        INBOXPILOT_RULES_PATH=str(rules),
        INBOXPILOT_REDIS_URL=redis_url,
        INBOXPILOT_LOG_FORMAT="json",
        INBOXPILOT_POLL_INTERVAL_S="0.5",
        INBOXPILOT_RATE_LIMIT_PER_S="1000",
        INBOXPILOT_RATE_BURST="1000",
    )
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--threads", "2"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait(lambda: _notes(simulator) >= 1, STARTUP_TIMEOUT_S, "a first note")
            # From now on every message read is slow: the queued notes drain slowly and the
            # next page of new conversations takes BACKLOG x SLOW_READ_S to read.
            sim.set_faults(latency_s=SLOW_READ_S, paths=[MESSAGES])
            for _ in range(BACKLOG):
                sim.new_conversation(channel="sms", text="refund again")
            reads = sim.fault_counts().get("latency", 0)
            _wait(lambda: sim.fault_counts().get("latency", 0) >= reads + 8, 60, "slow reads under way")
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            proc.wait(timeout=GRACE_S)  # TimeoutExpired fails the test
            took_s = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = log_path.read_text()
    assert proc.returncode == 0, output[-2000:]
    assert "Traceback" not in output
    print(f"exit after SIGTERM: {took_s:.1f} s")
    sent = _notes(simulator)
    assert sent < 2 * BACKLOG  # the backlog was not simply drained before exiting
    if redis_url:  # what was claimed and not run is handed back: still queued for the next process
        client = redis.Redis.from_url(redis_url)
        pending = _pending_items(client)
        # Each is on the queue (ready or delayed) or due for the ledger's re-drive: none is lost.
        due = {k.decode() for k in client.zrange(REDRIVE_KEY, 0, -1)}
        assert pending <= _queued_items(client) | due, (sent, pending)


def _pending_items(client: redis.Redis) -> set[str]:
    """Ledger items claimed and not finished (a reply step carries up to 50 of them)."""
    keys = [k for k in client.scan_iter(match=f"{ENTRY_PREFIX}*", count=1000) if client.type(k) == b"hash"]
    states = [client.hget(key, "state") for key in keys]
    pending = [key for key, state in zip(keys, states, strict=True) if state == b"pending"]
    return {key.decode().removeprefix(ENTRY_PREFIX) for key in pending}


def _queued_items(client: redis.Redis) -> set[str]:
    """The ledger items the messages left on the queue carry."""
    raw = [*client.hvals(QUEUED), *client.hvals(DELAYED)]
    messages = (dramatiq.Message.decode(data) for data in raw)
    return {key for message in messages for key in item_keys(message)}


def _notes(simulator: SimulatorHandle) -> int:
    path = SEND_PATHS["sms"]
    return sum(1 for e in simulator.sim.audit_log() if e.path == path and e.outcome == "applied")
