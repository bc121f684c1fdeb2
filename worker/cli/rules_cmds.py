"""`inboxpilot validate` and `inboxpilot schema`: the rule files' checker and JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from worker.cli import app
from worker.rules.errors import RuleError


@app.command("validate")
def validate(
    paths: list[Path] = typer.Argument(..., help="Rule files or folders"),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also load sub-folders"),
    online: bool = typer.Option(
        False, "--online", help="Check predefined messages against the API instead of predefined/"
    ),
) -> None:
    """Check rule files; print each error as file:line:column and exit 1 when any."""
    from worker.rules.loader import discover, load_rules
    from worker.rules.predefined import unknown_references

    files, _ = discover(paths, recursive=recursive)
    result = load_rules(paths, recursive=recursive)
    errors = list(result.errors)
    known = _online_predefined() if online else _folder_predefined(paths, errors)
    if known is not None:
        errors += unknown_references(result.ruleset.all_rules, known[0], known[1])
    for error in errors:
        typer.echo(error.format())
    if not files and not errors:
        typer.echo("no rule files found (*.yaml, *.yml)", err=True)
        raise typer.Exit(1)
    if errors:
        typer.echo(f"{len(errors)} error(s)", err=True)
        raise typer.Exit(1)
    rs = result.ruleset
    typer.echo(
        f"ok: {len(rs.all_rules)} rules ({len(rs.rules)} enabled), {len(rs.calendars)} calendars, "
        f"{len(rs.pools)} pools in {len(files)} files"
    )
    from worker.rules.documented import record_notes

    for rule in rs.all_rules:  # fields the documented API lacks: derived, or never there
        for note in record_notes(rule):
            typer.echo(f"note: {note}")


Known = tuple[set[str], set[int] | None]


def _folder_predefined(paths: list[Path], errors: list[RuleError]) -> Known | None:
    """Titles in the predefined/ folder next to the rules (its own errors added), or None."""
    from worker.rules.predefined import find_folder, load_folder

    folder = find_folder(paths)
    if folder is None:
        return None
    replies, folder_errors = load_folder(folder)
    errors += folder_errors
    return {reply.title for reply in replies}, None


def _online_predefined() -> Known:
    from worker.api.client import ApiClient
    from worker.api.errors import ApiError
    from worker.api.services import Services
    from worker.cli.common import settings_or_exit

    api = Services(ApiClient.from_settings(settings_or_exit()))
    try:
        records = list(api.predefined.find())
    except ApiError as exc:
        typer.echo(f"inboxpilot: cannot read the predefined messages: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        api.client.close()
    return {r.title for r in records}, {int(r.id) for r in records}


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of rule files (for editor completion)."""
    from worker.rules.schema import rules_json_schema

    typer.echo(json.dumps(rules_json_schema(), indent=2))
