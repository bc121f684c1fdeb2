"""Finding 13.8: SIGTERM ends `inboxpilot run` within the documented grace even while a tick
is paging through a server that answers endless new ids (a real subprocess, real sockets)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.support.hostile_api import HostileHandle
from tests.test_readme import clean_env

ROOT = Path(__file__).resolve().parents[2]
# README, "Deploying": SIGTERM with no action in flight ends the process within this.
SIGTERM_GRACE_S = 15.0
STARTUP_TIMEOUT_S = 60.0
NEVER_MATCHES = """
rules:
  - id: never
    when: {status: closed}
    then:
      - assign: 201
"""


def conversation_pages(requests: list[tuple[str, str, str]]) -> int:
    return sum(1 for method, path, _ in requests if (method, path) == ("GET", "/conversations"))


def test_sigterm_ends_run_while_a_tick_pages_endless_new_ids(hostile: HostileHandle, tmp_path: Path) -> None:
    hostile.api.endless()
    rules = tmp_path / "rules.yaml"
    rules.write_text(NEVER_MATCHES)
    env = clean_env(
        INBOXPILOT_API_URL=hostile.url,
        INBOXPILOT_API_TOKEN=hostile.token,
        INBOXPILOT_RULES_PATH=str(rules),
        INBOXPILOT_LOG_FORMAT="json",
        INBOXPILOT_POLL_INTERVAL_S="0.5",
        # Budgets out of reach: only the stop request can end this tick.
        INBOXPILOT_POLL_MAX_PAGES="100000",
        INBOXPILOT_POLL_MAX_TICK_S="3600",
    )
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--threads", "2"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            paging = hostile.api.wait_for_requests(lambda r: conversation_pages(r) >= 20, STARTUP_TIMEOUT_S)
            assert paging, f"the worker never paged: {log_path.read_text()[-2000:]}"
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=SIGTERM_GRACE_S)  # TimeoutExpired fails the test
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = log_path.read_text()
    assert proc.returncode == 0, output[-2000:]
    assert '"tick_stopped"' in output and '"scheduler_stopped"' in output
    assert "Traceback" not in output
