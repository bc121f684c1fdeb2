"""Helpers shared by commands: settings loading with a clean exit, logging set-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from worker.cli import app
from worker.config import Settings, SettingsError, load_settings
from worker.logs import configure_logging
from worker.rules.book import Rulebook
from worker.rules.errors import RulesInvalid


def settings_or_exit(**overrides: Any) -> Settings:
    """Load settings; on a bad value print one line per problem and exit 2."""
    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        for line in str(exc).splitlines():
            typer.echo(f"inboxpilot: {line}", err=True)
        raise typer.Exit(2) from None
    configure_logging(
        settings.log_level,
        settings.log_format,
        secrets=[settings.api_token.get_secret_value()],
    )
    return settings


@app.command("config")
def show_config() -> None:
    """Print the effective settings (the token masked) and exit."""
    import json

    settings = settings_or_exit()
    typer.echo(json.dumps(settings.public_dict(), indent=2))


def rulebook_or_exit(path: Path) -> Rulebook:
    """Load the rules; on errors print each located error and exit 1."""
    try:
        return Rulebook(path)
    except RulesInvalid as exc:
        for error in exc.errors:
            typer.echo(error.format(), err=True)
        typer.echo(f"inboxpilot: {len(exc.errors)} error(s) in the rules at {path}", err=True)
        raise typer.Exit(1) from None
