"""Issue 15, progress: long CLI work shows a bar with totals and time left on a terminal, and
nothing extra when piped."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
from rich.console import Console

from tests.test_readme import ROOT, clean_env
from worker.cli.progress import track
from worker.simulator.testing import SimulatorHandle

DEADLINE_S = 60.0


def test_a_bar_with_totals_and_time_left_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    assert list(track(range(7), "reading messages", 7, console=console)) == list(range(7))
    text = out.getvalue()
    assert "reading messages" in text and "7/7" in text and "eta" in text, text


def test_nothing_when_not_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False)
    assert list(track(range(7), "reading messages", 7, console=console)) == list(range(7))
    assert out.getvalue() == ""


def _env(simulator: SimulatorHandle) -> dict[str, str]:
    return clean_env(
        INBOXPILOT_API_URL=simulator.url,
        INBOXPILOT_API_TOKEN=simulator.token,
        INBOXPILOT_RULES_PATH=str(ROOT / "rules"),
        COLUMNS="120",
    )


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (stdout piped); its exit code, stdout and terminal text."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: the process has ended
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    out, _ = proc.communicate(timeout=DEADLINE_S)
    os.close(master)
    return proc.returncode, out, seen.decode(errors="replace")


@pytest.mark.parametrize(
    "argv",
    [
        ["sla", "--all"],
        ["plan", "--full"],
        ["backtest", str(ROOT / "rules"), "--since", "2000-01-01T00:00:00Z"],
    ],
    ids=["sla", "plan --full", "backtest"],
)
def test_long_commands_show_progress_on_a_terminal_only(simulator: SimulatorHandle, argv: list[str]) -> None:
    simulator.sim.seed(40, seed=3)
    command = [sys.executable, "-m", "worker", *argv]
    code, out, terminal = _on_a_terminal(command, _env(simulator))
    assert code == 0, terminal
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal)
    assert re.search(r" (\d+)/\1 .* eta ", plain), plain  # the total reached, with time left
    assert re.search(r"eta \d+:\d\d:\d\d", plain), plain
    piped = subprocess.run(command, cwd=ROOT, env=_env(simulator), capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    assert len(piped.stdout.splitlines()) == len(out.splitlines())  # the same answer either way
