"""Issue 15, CLI conventions: `--version`, `-h`, boolean flags shown as flags, commands in
panels, typer within the tested range, a `--help` that loads no command module, logs never on
the stdout of an inspection command, case-insensitive log levels."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import tomllib
from importlib.metadata import version

import pytest
import typer
from packaging.requirements import Requirement
from typer.testing import CliRunner

from tests.test_readme import ROOT, clean_env
from worker.cli import COMMANDS, app, load_all
from worker.simulator.testing import SimulatorHandle

PANELS = ["Run", "Inspect", "Rules", "Operate"]
# What `inboxpilot --help` must not import: the command modules and what they pull in.
HEAVY = ("worker.cli.common", "worker.config", "worker.rules", "worker.app", "pydantic", "redis",
         "dramatiq", "httpx", "structlog", "uvicorn", "jinja2")  # fmt: skip


def helps() -> dict[str, str]:
    """`inboxpilot X --help` for the root, every command and every sub-command."""
    runner = CliRunner()
    argvs = [[], *([name] for name in COMMANDS), *(["dead-letters", s] for s in ("list", "retry", "drop"))]
    out = {}
    for argv in argvs:
        result = runner.invoke(app, [*argv, "--help"], terminal_width=100)
        assert result.exit_code == 0, result.output
        out[" ".join(argv)] = result.output
    return out


def test_version() -> None:
    for flag in ("--version", "-V"):
        result = CliRunner().invoke(app, [flag])
        assert result.exit_code == 0
        assert result.output.strip() == f"inboxpilot {version('inboxpilot')}"


def test_dash_h_is_help_everywhere() -> None:
    runner = CliRunner()
    for argv in ([], ["plan"], ["dead-letters"], ["dead-letters", "retry"]):
        short, long = (runner.invoke(app, [*argv, flag], terminal_width=100) for flag in ("-h", "--help"))
        assert short.exit_code == 0 and short.output == long.output, argv


def test_boolean_flags_are_shown_as_flags_and_usage_names_arguments() -> None:
    for argv, text in helps().items():
        assert "<bool>" not in text and "BOOLEAN" not in text, f"inboxpilot {argv} --help:\n{text}"
        usage = next(line for line in text.splitlines() if "Usage:" in line)
        assert "{" not in usage, usage  # `backtest [OPTIONS] RULES`, not `{rules}`
    assert "RULES" in helps()["backtest"].split("Usage:", 1)[1].splitlines()[0]


def test_help_groups_the_commands_in_panels_in_order() -> None:
    text = helps()[""]
    positions = [text.index(f"─ {panel} ") for panel in PANELS]
    assert positions == sorted(positions), text
    for name, entry in COMMANDS.items():
        panel_at = text.index(f"─ {entry.panel} ")
        next_panels = [p for p in positions if p > panel_at]
        assert panel_at < text.index(f"│ {name} ") < (next_panels[0] if next_panels else len(text)), name


def test_the_command_list_is_the_commands_as_loaded() -> None:
    """`COMMANDS` (what `--help` shows without loading anything) equals the real commands."""
    load_all()
    group = typer.main.get_command(app)
    real = {name: cmd for name, cmd in group.commands.items()}  # type: ignore[attr-defined]
    assert set(real) == set(COMMANDS)
    for name, command in real.items():
        entry = COMMANDS[name]
        callback = command.callback
        module = inspect.unwrap(callback).__module__ if callback else None
        doc = inspect.cleandoc(command.help or "").split("\n\n")[0].replace("\n", " ")
        if module is not None:  # a group (dead-letters) has no callback of its own
            assert module == f"worker.cli.{entry.module}", name
        assert entry.help == doc, f"worker/cli/__init__.py COMMANDS[{name!r}].help should be {doc!r}"
        assert command.rich_help_panel == entry.panel, name


def test_typer_is_pinned_to_the_tested_range() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (typer_dep,) = [Requirement(d) for d in deps if Requirement(d).name == "typer"]
    assert str(typer_dep.specifier) in ("<0.27,>=0.24", ">=0.24,<0.27"), typer_dep
    assert typer_dep.specifier.contains(version("typer"))


def test_help_loads_no_command_module() -> None:
    """`inboxpilot --help` draws the overview from worker.cli.COMMANDS alone (it took 2.6 s)."""
    probe = (
        "import sys\n"
        "from worker.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print([m for m in sys.modules if m.startswith({HEAVY!r})], file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Inspect" in done.stdout
    assert done.stderr.strip() == "[]", done.stderr


@pytest.mark.parametrize("level", [None, "info", "Debug"], ids=["default", "info", "Debug"])
def test_inspection_commands_print_no_log_line_on_stdout(
    simulator: SimulatorHandle, level: str | None, tmp_path: object
) -> None:
    env = {
        "INBOXPILOT_API_URL": simulator.url,
        "INBOXPILOT_API_TOKEN": simulator.token,
        "INBOXPILOT_RULES_PATH": str(ROOT / "rules"),
        "INBOXPILOT_LOG_LEVEL": level,
        "INBOXPILOT_LOG_FORMAT": "json",
    }
    simulator.sim.seed(3, seed=2)
    result = CliRunner().invoke(app, ["plan", "--json"], env=env)  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)  # stdout is the answer and nothing else
    logged = [json.loads(line)["event"] for line in result.stderr.splitlines() if line.startswith("{")]
    if level is None:
        assert logged == [], result.stderr  # quiet unless a level was asked for
    if level == "Debug":
        assert "api_request" in logged, result.stderr  # asked for: on stderr, never stdout
