"""Helpers shared by commands: settings loading with a clean exit, logging set-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from worker.cli import app
from worker.cli.failures import EXIT_USAGE, Failure, remember
from worker.config import CONFIG_FILE_ENV, ENV_PREFIX, Settings, SettingsError, load_settings
from worker.logs import configure_logging
from worker.redact import url_secrets
from worker.rules.book import Rulebook
from worker.rules.errors import RulesInvalid


def settings_or_exit(*, needs_token: bool = False, service: bool = False, **overrides: Any) -> Settings:
    """Load settings; on a bad value print one line per problem and exit 2.

    `needs_token`: the command calls the API, so a missing token is a settings error too.
    `service`: a long-running command (run, sandbox) logs at the configured level; the
    others speak through their output and log only errors unless a level was set.
    """
    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        raise Failure(EXIT_USAGE, *str(exc).splitlines()) from None
    remember(settings)
    if needs_token and not settings.api_token.get_secret_value():
        raise Failure(
            EXIT_USAGE,
            f"setting {ENV_PREFIX}API_TOKEN: required to call the API (the bearer token of the "
            "Conversations API; for the simulator: sandbox-token)",
        )
    quiet = not service and settings.sources["log_level"] == "default"
    configure_logging(
        "ERROR" if quiet else settings.log_level,
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
