"""`inboxpilot dead-letters list|retry|drop`: look at and act on messages the workers gave up on.

A dead letter is a queue message whose retries ran out, that raised a never-retry
error, or that waited past the age limit. Its firings are `failed` in the ledger
(reason ``dead_lettered``); `retry` puts them back to pending *before* it
re-enqueues the message, so the actor acts on them again (the ledger still
decides whether anything is sent). Works with the Redis broker; with RabbitMQ use
its management UI on the ``inboxpilot.XQ`` queue.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import dramatiq
import typer

from worker.cli import app
from worker.cli.common import settings_or_exit
from worker.cli.failures import EXIT_USAGE, Failure
from worker.clock import SystemClock
from worker.queue.broker import AMQP_SCHEMES, build_broker
from worker.queue.dead_letters import drop_dead_letter, item_keys, list_dead_letters, reopen_and_retry
from worker.state.ledger import Ledger
from worker.state.redis_conn import connect

dead_letters_app = typer.Typer(help="List, retry or drop dead-lettered queue messages.", no_args_is_help=True)
app.add_typer(dead_letters_app, name="dead-letters")

QUEUE_HELP = "Only this queue (default: every queue with dead letters)"


@contextmanager
def _broker_and_ledger() -> Iterator[tuple[dramatiq.Broker, Ledger]]:
    settings = settings_or_exit()
    if not settings.redis_url:
        typer.echo("inboxpilot: dead-letters needs INBOXPILOT_REDIS_URL (the shared Redis)", err=True)
        raise typer.Exit(2)
    if settings.broker_url.startswith(AMQP_SCHEMES):
        typer.echo(
            "inboxpilot: dead-letters works with the Redis broker; with RabbitMQ use its "
            "management UI on the 'inboxpilot.XQ' queue",
            err=True,
        )
        raise typer.Exit(2)
    broker = build_broker(settings, set_global=False)
    ledger = Ledger(connect(settings.redis_url), SystemClock(), ttl_s=settings.ledger_ttl_s)
    try:
        yield broker, ledger
    finally:
        broker.close()


@dead_letters_app.command("list")
def list_cmd(
    queue: str | None = typer.Option(None, "--queue", help=QUEUE_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line"),
) -> None:
    """Show dead letters, oldest first: id, queue, actor, when, retries, firing keys, error."""
    with _broker_and_ledger() as (broker, _ledger):
        letters = list_dead_letters(broker, queue)
    for letter in letters:
        if as_json:
            typer.echo(json.dumps({**asdict(letter), "firing_keys": item_keys(letter)}, default=str))
        else:
            typer.echo(
                f"{letter.id}  {letter.queue}  {letter.actor}  {letter.dead_at:%Y-%m-%d %H:%M:%S}Z  "
                f"retries={letter.retries}  keys={','.join(item_keys(letter))}  {letter.error}"
            )
    if not as_json:
        typer.echo(f"{len(letters)} dead letter(s)", err=True)


IDS_HELP = "Dead-letter ids, as `list` shows them"
ALL_HELP = "Every dead letter (of --queue when given) instead of ids"


@dead_letters_app.command("retry")
def retry_cmd(
    ids: list[str] | None = typer.Argument(None, help=IDS_HELP, show_default=False),
    queue: str | None = typer.Option(None, "--queue", help=QUEUE_HELP),
    every: bool = typer.Option(False, "--all", help=ALL_HELP),
) -> None:
    """Re-enqueue dead letters with fresh retries; their firings go back to pending first."""
    _check_ids(ids, every)
    with _broker_and_ledger() as (broker, ledger):
        chosen = _all_ids(broker, queue) if every else ids or []
        missing = [i for i in chosen if not reopen_and_retry(broker, ledger, i, queue)]
    _report(len(chosen) - len(missing), "retried", missing)


@dead_letters_app.command("drop")
def drop_cmd(
    ids: list[str] | None = typer.Argument(None, help=IDS_HELP, show_default=False),
    queue: str | None = typer.Option(None, "--queue", help=QUEUE_HELP),
    every: bool = typer.Option(False, "--all", help=ALL_HELP),
) -> None:
    """Delete dead letters for good (their firings stay failed in the ledger)."""
    _check_ids(ids, every)
    with _broker_and_ledger() as (broker, _ledger):
        chosen = _all_ids(broker, queue) if every else ids or []
        missing = [i for i in chosen if not drop_dead_letter(broker, i, queue)]
    _report(len(chosen) - len(missing), "dropped", missing)


def _check_ids(ids: list[str] | None, every: bool) -> None:
    if bool(ids) == every:
        raise Failure(EXIT_USAGE, "give dead-letter ids or --all (one of the two)")


def _all_ids(broker: dramatiq.Broker, queue: str | None) -> list[str]:
    return [letter.id for letter in list_dead_letters(broker, queue)]


def _report(done: int, verb: str, missing: list[str]) -> None:
    typer.echo(f"{done} dead letter(s) {verb}")
    if missing:
        typer.echo(f"inboxpilot: no dead letter with id {', '.join(missing)}", err=True)
        raise typer.Exit(1)
