"""Helpers shared by commands: settings loading with a clean exit, logging set-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from worker.cli import app
from worker.config import CONFIG_FILE_ENV, ENV_PREFIX, Settings, SettingsError, load_settings
from worker.logs import configure_logging
from worker.redact import url_secrets
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
        secrets=[
            settings.api_token.get_secret_value(),
            *url_secrets(settings.redis_url),
            *url_secrets(settings.broker_url),
        ],
    )
    return settings


@app.command("config")
def show_config(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable: each value with its source"),
) -> None:
    """Print the effective settings and where each came from (secrets masked), then exit."""
    import json

    settings = settings_or_exit()
    values, sources = settings.public_dict(), settings.sources
    if as_json:
        typer.echo(json.dumps({k: {"value": v, "source": sources[k]} for k, v in values.items()}, indent=2))
        return
    config_file = os.environ.get(CONFIG_FILE_ENV)
    width = max(len(ENV_PREFIX + k) for k in values)
    for key, value in values.items():
        source = f"file {config_file}" if sources[key] == "file" else sources[key]
        shown = json.dumps(value) if value == "" else str(value)
        typer.echo(f"{ENV_PREFIX + key.upper():<{width}}  {shown:<40}  ({source})")


def rulebook_or_exit(path: Path) -> Rulebook:
    """Load the rules; on errors print each located error and exit 1."""
    try:
        return Rulebook(path)
    except RulesInvalid as exc:
        for error in exc.errors:
            typer.echo(error.format(), err=True)
        typer.echo(f"inboxpilot: {len(exc.errors)} error(s) in the rules at {path}", err=True)
        raise typer.Exit(1) from None
