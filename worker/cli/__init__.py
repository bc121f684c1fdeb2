"""The `inboxpilot` command line. Each command (group) lives in its own module; this
package builds the Typer app and loads a command's module only when it is run.

Why lazy: the command modules import the whole worker (pydantic models, rules, Redis,
dramatiq, the simulator), which took seconds before `inboxpilot --help` could print.
`COMMANDS` lists each command's module, help panel and one-line help, so the overview
needs none of them; tests/test_cli_conventions.py keeps the list equal to the modules.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

import typer
from typer.core import TyperCommand, TyperGroup

from worker.cli.failures import guarded


class Entry(NamedTuple):
    module: str
    panel: str
    help: str


RUN, INSPECT, RULES, OPS = "Run", "Inspect", "Rules", "Operate"
# In the order `--help` shows them, panel by panel.
COMMANDS: dict[str, Entry] = {
    "run": Entry(
        "run_cmds", RUN, "Run the worker until SIGTERM/Ctrl-C; in-flight actions finish before it exits."
    ),
    "demo": Entry("demo", RUN, "Run simulator + worker together and watch what fires and why."),
    "sandbox": Entry(
        "sandbox", RUN, "Serve the API simulator (Feathers semantics, in memory) for demos and manual tests."
    ),
    "plan": Entry(
        "inspect_cmds", INSPECT,
        "Dry run: poll once and print what would be done. Calls no mutating endpoint, claims nothing.",
    ),
    "explain": Entry(
        "inspect_cmds", INSPECT,
        "Fetch one conversation and show, per rule, whether it matches, why, and when it will fire.",
    ),
    "firings": Entry(
        "firings_cmds", INSPECT,
        "What fired, when, with what outcome and why (the worker's ledger; read-only).",
    ),
    "sla": Entry(
        "sla_cmds", INSPECT,
        "List SLA clocks at risk and in breach (time left, or how far over), most urgent first.",
    ),
    "backtest": Entry(
        "backtest_cmds", INSPECT,
        "Replay recent conversations through RULES and report what would have fired (read-only).",
    ),
    "validate": Entry(
        "rules_cmds", RULES, "Check rule files; print each error as file:line:column and exit 1 when any."
    ),
    "schema": Entry("rules_cmds", RULES, "Print the JSON Schema of rule files (for editor completion)."),
    "predefined": Entry("predefined_cmds", RULES, "Canned replies kept as code (rules/predefined/*.yaml)."),
    "config": Entry(
        "common", OPS, "Print the effective settings and where each came from (secrets masked), then exit."
    ),
    "dead-letters": Entry("deadletters", OPS, "List, retry or drop dead-lettered queue messages."),
}  # fmt: skip


class LazyGroup(TyperGroup):
    """Lists every command from `COMMANDS`; imports a command's module only to run it."""

    listing = False  # True while the overview is drawn: short stubs, no imports

    def list_commands(self, ctx: Any) -> list[str]:
        return [*COMMANDS, *(name for name in self.commands if name not in COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return self.commands.get(cmd_name)
        if self.listing:
            return TyperCommand(cmd_name, help=entry.help, rich_help_panel=entry.panel)
        load(cmd_name)
        # Built again after the load: the command as registered, guarded, in its panel.
        return typer.main.get_command(app).commands.get(cmd_name)  # type: ignore[attr-defined]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        LazyGroup.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            LazyGroup.listing = False


app = typer.Typer(
    name="inboxpilot",
    cls=LazyGroup,
    help="The automation worker for the Conversations API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"inboxpilot {version('inboxpilot')}")
        except PackageNotFoundError:  # running from a source tree that was never installed
            from worker import __version__

            typer.echo(f"inboxpilot {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """inboxpilot: routing, SLA escalation and follow-ups for the Conversations API."""


def load(name: str) -> None:
    """Import the module of command `name` (it registers itself on `app`), then guard and file it."""
    importlib.import_module(f"worker.cli.{COMMANDS[name].module}")
    _finish(app)


def load_all() -> None:
    """Every command loaded (for tests and tools that inspect the whole CLI)."""
    for name in COMMANDS:
        load(name)


def _finish(typer_app: typer.Typer) -> None:
    """Each newly registered command: wrapped so no failure is a traceback, put in its panel."""
    for info in typer_app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "guarded", False):
            info.callback = guarded(info.callback)
        if typer_app is app and info.name in COMMANDS:
            info.rich_help_panel = COMMANDS[info.name].panel
    for group in typer_app.registered_groups:
        if group.name in COMMANDS:
            group.rich_help_panel = COMMANDS[group.name].panel
        if group.typer_instance is not None:
            _finish(group.typer_instance)


def main() -> None:
    app(prog_name="inboxpilot")  # the same name in help whether run as `inboxpilot` or `python -m worker`
