"""Issue 13.11: no traceback reaches a user. Every command is run against every way its
environment can be wrong -- no token, a wrong token, a wrong URL, a closed port, an HTML
answer, 403, 429, a timeout, Redis down, a port in use -- and must end with a few clear
`inboxpilot: ...` lines and a documented exit code, never `Traceback`.

The API failures come from real loopback servers (a closed port, and a tiny HTTP server
answering HTML / 401 / 403 / 429, or never answering); Redis down is a real closed port.
In-process through typer's CliRunner (the same wrapped callbacks the console script runs),
plus the real `python -m worker` for the worst cases of the issue.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.test_readme import ROOT, clean_env
from worker.cli import app
from worker.cli.failures import EXIT_API, EXIT_CODES, EXIT_PORT, EXIT_REDIS, EXIT_USAGE
from worker.clock import FakeClock
from worker.simulator.testing import SimulatorHandle, served_simulator
from worker.state.redis_conn import connect

TOKEN = "tok-cli-failures-5521"
RULES = str(ROOT / "rules")
MAX_LINES = 4  # "one clear line, or a short block"
LOGIN_PAGE = b"<!doctype html><html><body><form action='/login'>Sign in</form></body></html>"
ANSWERS: dict[str, tuple[int, str, bytes, dict[str, str]]] = {
    "html": (200, "text/html", LOGIN_PAGE, {}),
    "wrong_url": (404, "text/html", b"<html><h1>404 Not Found</h1></html>", {}),
    "wrong_token": (401, "application/json", b'{"name":"NotAuthenticated","message":"Invalid token"}', {}),
    "forbidden": (403, "application/json", b'{"name":"Forbidden","message":"Not your organization"}', {}),
    "rate_limited": (429, "application/json", b'{"name":"TooManyRequests","message":"Slow down"}',
                     {"Retry-After": "30"}),
}  # fmt: skip


class _Answering(BaseHTTPRequestHandler):
    """Answers every request with one fixed status and body; `stall` never answers."""

    answer: tuple[int, str, bytes, dict[str, str]] | None = None
    release = threading.Event()

    def do_GET(self) -> None:
        if self.answer is None:  # a server that accepted the connection and went silent
            self.release.wait(30)
            return
        status, kind, body, headers = self.answer
        self.send_response(status)
        for name, value in {"Content-Type": kind, "Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PATCH = do_GET

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def _serve(answer: tuple[int, str, bytes, dict[str, str]] | None) -> ThreadingHTTPServer:
    handler = type("Handler", (_Answering,), {"answer": answer})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(autouse=True)
def _fresh_embedded_redis() -> None:
    """Each command starts as a new process would: the in-process Redis (its shared API pause
    after a 429, its ledger) is per process, and these commands run in this one."""
    connect("").flushall()


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    """A port nothing listens on (bound, never listening: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A port something already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with served_simulator(FakeClock(), TOKEN) as handle:
        handle.sim.seed(5, seed=1)
        yield handle


@pytest.fixture(scope="module")
def cases(
    closed_port: int, busy_port: int, simulator: SimulatorHandle
) -> Iterator[dict[str, dict[str, str]]]:
    """Case name -> the INBOXPILOT_* environment that produces it."""
    servers = {name: _serve(answer) for name, answer in {**ANSWERS, "timeout": None}.items()}
    base = {
        "INBOXPILOT_API_TOKEN": TOKEN,
        "INBOXPILOT_RULES_PATH": RULES,
        "INBOXPILOT_READ_RETRIES": "0",
        "INBOXPILOT_HTTP_TIMEOUT_S": "0.5",
        "INBOXPILOT_HTTP_CONNECT_TIMEOUT_S": "0.5",
    }
    env = {
        name: {**base, "INBOXPILOT_API_URL": f"http://127.0.0.1:{s.server_port}"}
        for name, s in servers.items()
    }
    env["missing_token"] = {**env["html"], "INBOXPILOT_API_TOKEN": ""}
    env["refused"] = {**base, "INBOXPILOT_API_URL": f"http://127.0.0.1:{closed_port}"}
    good_api = {**base, "INBOXPILOT_API_URL": simulator.url}
    env["redis_down"] = {**good_api, "INBOXPILOT_REDIS_URL": f"redis://:pw@127.0.0.1:{closed_port}/0"}
    env["port_in_use"] = {**good_api, "INBOXPILOT_METRICS_PORT": str(busy_port)}
    yield env
    _Answering.release.set()
    for server in servers.values():
        server.shutdown()
        server.server_close()


API_CASES = (
    "missing_token",
    "wrong_token",
    "refused",
    "wrong_url",
    "html",
    "forbidden",
    "rate_limited",
    "timeout",
)
CASES = (*API_CASES, "redis_down", "port_in_use")
# Commands and the exit code each case must give (a case not listed: any documented code).
API_EXPECT = {"missing_token": EXIT_USAGE, **{case: EXIT_API for case in API_CASES[1:]}}
COMMANDS: dict[str, tuple[list[str], dict[str, int]]] = {
    "plan": (["plan"], {**API_EXPECT, "redis_down": EXIT_REDIS}),
    "plan --full": (["plan", "--full"], {**API_EXPECT, "redis_down": EXIT_REDIS}),
    "explain": (["explain", "-c", "1"], {**API_EXPECT, "redis_down": EXIT_REDIS}),
    "sla": (["sla"], API_EXPECT),
    "backtest": (["backtest", RULES, "--since", "1d"], API_EXPECT),
    # The daemon: a broken setup is refused at start; an API that is only down (refused,
    # timeout, 429) is waited for, which tests/test_cli_failures.py::test_run_waits_* covers.
    "run": (
        ["run"],
        {"missing_token": EXIT_USAGE, "wrong_token": EXIT_API, "wrong_url": EXIT_API, "html": EXIT_API,
         "forbidden": EXIT_API, "redis_down": EXIT_REDIS, "port_in_use": EXIT_PORT},
    ),
    "firings": (["firings"], {"redis_down": EXIT_REDIS}),
    "dead-letters list": (["dead-letters", "list"], {"redis_down": EXIT_REDIS}),
    "dead-letters retry": (["dead-letters", "retry", "--all"], {"redis_down": EXIT_REDIS}),
    "dead-letters drop": (["dead-letters", "drop", "x-1"], {"redis_down": EXIT_REDIS}),
    "predefined sync": (["predefined", "sync", "--dry-run"], API_EXPECT),
    "config": (["config"], {}),
    "validate": (["validate", RULES], {}),
    "schema": (["schema"], {}),
}  # fmt: skip
RUN_KEEPS_WAITING = {"refused", "timeout", "rate_limited"}


def _params() -> Iterator[object]:
    for command in COMMANDS:
        for case in CASES:
            if command == "run" and case in RUN_KEEPS_WAITING:
                continue
            yield pytest.param(command, case, id=f"{command}-{case}")


@pytest.mark.parametrize(("command", "case"), list(_params()))
def test_every_command_fails_cleanly_in_every_case(
    command: str, case: str, cases: dict[str, dict[str, str]]
) -> None:
    argv, expected = COMMANDS[command]
    result = CliRunner().invoke(app, argv, env={**cases[case], "INBOXPILOT_CONFIG": None})  # type: ignore[dict-item]
    output = result.output
    assert "Traceback" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in EXIT_CODES, (result.exit_code, output)
    if case in expected:
        assert result.exit_code == expected[case], output
    if result.exit_code != 0:
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        if command == "run":  # a service logs (JSON off a terminal) before it fails
            errors = [line for line in errors if not line.startswith("{")]
        assert errors and all(line.startswith("inboxpilot: ") for line in errors), result.stderr
        assert len(errors) <= MAX_LINES, result.stderr
        assert TOKEN not in output and ":pw@" not in output


def test_sandbox_on_a_busy_port_is_one_line_before_any_banner(busy_port: int) -> None:
    result = CliRunner().invoke(app, ["sandbox", "--port", str(busy_port), "--seed", "1"])
    assert result.exit_code == EXIT_PORT, result.output
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"inboxpilot: cannot listen on 127.0.0.1:{busy_port}: address already in use"
    ]


@pytest.mark.parametrize("case", ["missing_token", "html", "forbidden", "timeout", "redis_down"])
def test_the_real_console_entry_prints_no_traceback(case: str, cases: dict[str, dict[str, str]]) -> None:
    """`python -m worker plan`, as a user runs it (the command the issue saw print ~58 lines)."""
    done = subprocess.run(
        [sys.executable, "-m", "worker", "plan"],
        cwd=ROOT,
        env=clean_env(**cases[case]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.returncode == (
        EXIT_USAGE if case == "missing_token" else EXIT_REDIS if case == "redis_down" else EXIT_API
    )
    assert len(done.stderr.strip().splitlines()) <= MAX_LINES, done.stderr


def test_dead_letters_with_redis_down_is_one_line(tmp_path: Path, closed_port: int) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker", "dead-letters", "list"],
        cwd=ROOT,
        env=clean_env(INBOXPILOT_REDIS_URL=f"redis://127.0.0.1:{closed_port}/0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_REDIS and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("case", sorted(RUN_KEEPS_WAITING))
def test_run_waits_out_an_api_that_is_only_down(case: str, cases: dict[str, dict[str, str]]) -> None:
    """`run` is a service: an API that refuses connections, times out or answers 429 at start is
    logged once and waited for (like any outage); SIGTERM then ends it cleanly, no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run"],
        cwd=ROOT,
        env=clean_env(**cases[case], INBOXPILOT_LOG_FORMAT="json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if '"running"' in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(60), "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    text = "".join(lines)
    assert proc.returncode == 0, text
    assert "Traceback" not in text
    assert sum('"api_unavailable_at_start"' in line for line in lines) == 1, text
