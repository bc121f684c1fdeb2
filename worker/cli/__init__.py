"""The `inboxpilot` command line. Each command group lives in its own module;
this package only builds the Typer app and wires them in."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="inboxpilot",
    help="The automation worker for the Conversations API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """inboxpilot: routing, SLA escalation and follow-ups for the Conversations API."""


# Command modules register themselves on `app` when imported.
from worker.cli import (  # noqa: E402
    backtest_cmds,  # noqa: F401
    common,  # noqa: F401
    deadletters,  # noqa: F401
    demo,  # noqa: F401
    firings_cmds,  # noqa: F401
    inspect_cmds,  # noqa: F401
    predefined_cmds,  # noqa: F401
    rules_cmds,  # noqa: F401
    run_cmds,  # noqa: F401
    sandbox,  # noqa: F401
    sla_cmds,  # noqa: F401
)
from worker.cli.failures import guarded  # noqa: E402


def _guard_all(typer_app: typer.Typer) -> None:
    """Wrap every command so that no failure reaches the user as a traceback."""
    for info in typer_app.registered_commands:
        if info.callback is not None:
            info.callback = guarded(info.callback)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _guard_all(group.typer_instance)


_guard_all(app)


def main() -> None:
    app()
