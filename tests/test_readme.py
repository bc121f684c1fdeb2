"""The README's commands work as written: the Quick start is intact, CI runs the same test
command, and the commands that need no network beyond loopback are run here as a new user
would (`inboxpilot` = this venv's `python -m worker`)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
QUICK_START = (
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/inboxpilot demo --for 30s",
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest",
)
INBOXPILOT = f"{sys.executable} -m worker"
DEADLINE_S = 30.0


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a new user: no INBOXPILOT_* settings from the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXPILOT_")}
    return {**env, **extra}


def block_after(heading: str) -> list[str]:
    """The command lines of the first ```bash block after `heading`."""
    match = re.search(re.escape(heading) + r".*?```bash\n(.*?)```", README, re.S)
    assert match, f"README has no bash block after {heading!r}"
    return [line for line in match.group(1).splitlines() if line.strip()]


def shell(line: str, tmp_path: Path, env: dict[str, str], timeout_s: float = 60) -> str:
    line = line.replace("/tmp/", f"{tmp_path}/")  # before the interpreter's path goes in
    command = re.sub(r"\binboxpilot\b", INBOXPILOT, line, count=1)
    done = subprocess.run(
        command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 0, f"`{line}` exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)  # polling a server that is starting, with a deadline
    pytest.fail(f"{what} did not come up within {DEADLINE_S} s")


def test_quick_start_is_verbatim_and_ci_runs_the_same_tests() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    for command in QUICK_START:
        assert f"```bash\n{command}\n```" in quick, f"Quick start lost: {command}"
    assert QUICK_START[0].endswith("inboxpilot demo --for 30s")
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^python -m pytest$", ci, re.M), ".ci/run must run the README's test command"
    assert re.search(r"pip install .*-e '\.\[test", ci), ".ci/run must install the test extra"


def test_every_command_the_readme_lists_exists() -> None:
    from worker.cli import COMMANDS  # equal to the loaded commands: tests/test_cli_conventions.py

    commands = set(COMMANDS)
    listed = set(re.findall(r"^\| `inboxpilot ([a-z-]+)", README, re.M))
    assert listed == commands, f"README lists {sorted(listed)}, the CLI has {sorted(commands)}"


def _help_argvs() -> list[list[str]]:
    from worker.cli import COMMANDS

    subs = [["dead-letters", sub] for sub in ("list", "retry", "drop")]
    return [[], *([name] for name in COMMANDS), *subs]


@pytest.mark.parametrize("argv", _help_argvs(), ids=lambda argv: " ".join(argv) or "inboxpilot")
def test_each_commands_help_as_a_user_runs_it(argv: list[str]) -> None:
    """`inboxpilot [COMMAND] --help`, a new process each, as a user would type it."""
    done = subprocess.run(
        [*INBOXPILOT.split(), *argv, "--help"],
        cwd=ROOT, env=clean_env(COLUMNS="100"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert f"Usage: inboxpilot {' '.join(argv)}".rstrip() in done.stdout, done.stdout
    assert "Traceback" not in done.stdout


@pytest.mark.slow
def test_offline_commands(tmp_path: Path) -> None:
    lines = block_after("Offline, as a new user:")
    assert [line.split()[1] for line in lines] == ["validate", "schema", "config", "demo"]
    env = clean_env()
    outputs = {line.split()[1]: shell(line, tmp_path, env) for line in lines}
    assert re.search(r"^INBOXPILOT_API_TOKEN +\"\" +\(default\)$", outputs["config"], re.M), outputs["config"]
    assert (tmp_path / "inboxpilot-schema.json").read_text().lstrip().startswith("{")
    assert "summary by rule" in outputs["demo"]


@pytest.fixture
def sandbox() -> Iterator[tuple[str, str]]:
    """`inboxpilot sandbox` as the README starts it, on a free port."""
    (line,) = [ln for ln in block_after("Against the simulator") if " sandbox " in f" {ln} "]
    port = str(free_port())
    argv = [sys.executable, "-m", "worker", *line.split()[1:]]
    argv[argv.index("--port") + 1] = port
    token = argv[argv.index("--token") + 1]
    proc = subprocess.Popen(argv, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: (
                httpx.get(f"{url}/conversations", headers={"Authorization": f"Bearer {token}"}).status_code
                == 200
            ),
            "sandbox",
        )
        yield url, token
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


@pytest.mark.slow
def test_commands_against_the_sandbox(sandbox: tuple[str, str], tmp_path: Path) -> None:
    url, token = sandbox
    lines = [ln for ln in block_after("Against the simulator") if " sandbox " not in f" {ln} "]
    for line in lines:
        line = line.replace("http://127.0.0.1:8080", url)
        assert f"INBOXPILOT_API_TOKEN={token}" in line
        words = line.split()
        env = clean_env(**dict(w.split("=", 1) for w in words if "=" in w and w.startswith("INBOXPILOT_")))
        command = " ".join(w for w in words if not w.startswith("INBOXPILOT_"))
        if command.split()[1] == "run":
            run_until_ready(command, env)
        else:
            assert shell(command, tmp_path, env).strip()


def run_until_ready(command: str, env: dict[str, str]) -> None:
    """`inboxpilot run`: ready on /readyz, then a clean exit on SIGTERM."""
    port = str(free_port())
    env = {**env, "INBOXPILOT_METRICS_PORT": port}
    argv = [sys.executable, "-m", "worker", *command.split()[1:]]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, "inboxpilot run")
        assert "inboxpilot_polls_total" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
