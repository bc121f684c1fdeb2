"""`inboxpilot validate` and `inboxpilot schema`: the rule files' checker and JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from worker.cli import app


@app.command("validate")
def validate(
    paths: list[Path] = typer.Argument(..., help="Rule files or folders"),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also load sub-folders"),
) -> None:
    """Check rule files; print each error as file:line:column and exit 1 when any."""
    from worker.rules.loader import discover, load_rules

    files, _ = discover(paths, recursive=recursive)
    result = load_rules(paths, recursive=recursive)
    for error in result.errors:
        typer.echo(error.format())
    if not files and not result.errors:
        typer.echo("no rule files found (*.yaml, *.yml)", err=True)
        raise typer.Exit(1)
    if result.errors:
        typer.echo(f"{len(result.errors)} error(s)", err=True)
        raise typer.Exit(1)
    rs = result.ruleset
    typer.echo(
        f"ok: {len(rs.all_rules)} rules ({len(rs.rules)} enabled), {len(rs.calendars)} calendars, "
        f"{len(rs.pools)} pools in {len(files)} files"
    )


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of rule files (for editor completion)."""
    from worker.rules.schema import rules_json_schema

    typer.echo(json.dumps(rules_json_schema(), indent=2))
