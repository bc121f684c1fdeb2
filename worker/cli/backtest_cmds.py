"""`inboxpilot backtest RULES --since 7d`: what the rules would have done last week. Read-only."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from worker.cli import app
from worker.cli.common import settings_or_exit
from worker.cli.progress import track

if TYPE_CHECKING:
    from worker.api.models import Conversation
    from worker.backtest import PauseReader
    from worker.config import Settings
    from worker.rules.context import Pauses
    from worker.rules.model import RuleSet


@app.command("backtest")
def backtest(
    rules: Path = typer.Argument(..., help="Rule file or folder to try"),
    since: str = typer.Option("7d", "--since", help="How far back: a duration (7d, 36h) or an ISO time"),
    latency: str = typer.Option("60s", "--latency", help="How long the worker takes to act (for 'moot')"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
    recursive: bool = typer.Option(False, "--recursive", help="Include sub-folders of RULES"),
) -> None:
    """Replay recent conversations through RULES and report what would have fired (read-only)."""
    from worker.api.client import ApiClient
    from worker.api.services import Services
    from worker.backtest import (
        IdleCheck,
        conversation_count,
        fetch_histories,
        format_table,
        read_ahead,
        replay,
    )
    from worker.rules.durations import DurationError, parse_duration
    from worker.rules.loader import load_rules

    settings = settings_or_exit(needs_token=True)
    loaded = load_rules([rules], recursive=recursive)
    for error in loaded.errors:
        typer.echo(error.format(), err=True)
    if loaded.errors:
        raise typer.Exit(1)
    now = datetime.now(UTC)
    try:
        start = _since(since, now)
        delay = parse_duration(latency)
    except (DurationError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    ruleset = loaded.ruleset
    api = Services(ApiClient.from_settings(settings))
    # An API failure ends the command through worker.cli.failures (one line, exit 3).
    pauses = _pause_reader(settings, ruleset, now)
    idle = IdleCheck(ruleset, start, now)  # time rules fire on unchanged conversations too
    found = fetch_histories(api, start, contacts=ruleset.needs_contact, pauses=pauses, idle=idle)
    # Replayed as read, from the first batch on: the reading runs ahead in a thread, the replay's
    # CPU between its requests (listing every conversation first left ~5 s of requests alone).
    histories = track(read_ahead(found), "reading and replaying", conversation_count(api))
    report = replay(ruleset, histories, start, now, latency=delay)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_table(report))


def _since(value: str, now: datetime) -> datetime:
    """`7d` (a duration back from now) or an ISO 8601 time."""
    from worker.rules.durations import parse_duration

    if value[:1].isdigit() and "-" not in value:
        return now - parse_duration(value)
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _pause_reader(settings: Settings, ruleset: RuleSet, now: datetime) -> PauseReader | None:
    """The loop's SLA pause record (read only), when the worker's Redis is configured."""
    if not settings.redis_url:
        return None
    import redis as redis_lib

    from worker.state.redis_conn import connect
    from worker.state.sla_pauses import SlaPauses

    record = SlaPauses(connect(settings.redis_url))

    def read(conversations: Sequence[Conversation]) -> Mapping[int, Pauses]:
        try:
            return record.read(ruleset, conversations, now)
        except redis_lib.RedisError:
            return {}  # no record: only the current pause counts, as without Redis

    return read
