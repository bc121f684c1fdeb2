"""`inboxpilot plan` and `inboxpilot explain`: look before the worker acts. Both only read the API."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import redis
import typer

from worker.cli import app
from worker.cli.common import rulebook_or_exit, settings_or_exit
from worker.cli.progress import progress
from worker.clock import FakeClock, SystemClock
from worker.config import Settings
from worker.rules.evaluator import Evaluation
from worker.rules.firing import Step, item_key
from worker.state.breaker import Breaker
from worker.state.ledger import Ledger
from worker.state.observed import Observations
from worker.state.redis_conn import connect
from worker.state.sla_pauses import SlaPauses

if TYPE_CHECKING:
    from worker.api.models import Conversation
    from worker.scheduling.tick import Loop


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time (e.g. 2026-11-25T14:30:00Z)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@app.command("explain")
def explain(
    conversation: int = typer.Option(..., "--conversation", "-c", help="Conversation id"),
    at: str | None = typer.Option(None, "--at", help="Evaluate at this ISO time instead of now"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
) -> None:
    """Fetch one conversation and show, per rule, whether it matches, why, and when it will fire."""
    from worker.api.client import ApiClient
    from worker.api.errors import NotFound
    from worker.api.services import Services
    from worker.rules.evaluator import evaluate
    from worker.rules.explain import format_explanation
    from worker.scheduling.snapshots import SnapshotReader

    settings = settings_or_exit(needs_token=True)
    rules = rulebook_or_exit(settings.rules_path)
    api = Services(ApiClient.from_settings(settings))
    now = _parse_time(at) or datetime.now(UTC)
    shared = connect(settings.redis_url) if settings.redis_url else None
    # The loop's reader: the same messages, contact and SLA pauses the worker evaluates.
    reader = SnapshotReader(api, SlaPauses(shared) if shared is not None else None)
    try:
        record = api.conversations.get(conversation)
        if shared is not None:  # the owner and stage times the worker observed (read only)
            record = Observations(shared, SystemClock(), ttl_s=settings.ledger_ttl_s).apply(
                [record], record=False
            )[0]
        snapshot = reader.read_one(rules.ruleset, record, now)
    except NotFound as exc:
        if exc.message.lstrip().startswith("<"):
            raise  # an HTML 404: a wrong API URL, not a missing conversation
        typer.echo(f"inboxpilot: the API has no conversation {conversation} ({exc.message})", err=True)
        raise typer.Exit(1) from None
    if snapshot is None:
        typer.echo(
            f"inboxpilot: cannot read the messages or contact of conversation {conversation}", err=True
        )
        raise typer.Exit(1)
    evaluation = evaluate(rules.ruleset, snapshot, now, explain=True)
    history = _fired_before(shared, settings.ledger_ttl_s, evaluation) if shared is not None else []
    before = {e["rule"]: _fired_words(e) for e in history}
    paused = _paused_until(shared, settings, conversation, now) if shared is not None else None
    if as_json:
        data = json.loads(format_explanation(evaluation, "json", before))
        breaker = {"paused_until": paused.isoformat() if paused else None}
        typer.echo(json.dumps({**data, "ledger": history, "loop_breaker": breaker}, indent=2))
        return
    if paused is not None:
        typer.echo(
            f"loop breaker: automation is paused on this conversation until {paused.isoformat()} "
            f"(rules fired on it more than {settings.breaker_max_firings} times in "
            f"{settings.breaker_window_s:g} s); no rule fires on it before then\n"
        )
    typer.echo(format_explanation(evaluation, "text", before))
    typer.echo(f"history: inboxpilot firings -c {conversation}")


def _fired_words(entry: dict[str, str]) -> str:
    """When the firing was recorded, and "(still pending)" or "(failed)" when it is not done."""
    state = entry["state"]
    return (
        entry["at"]
        if state == "done"
        else f"{entry['at']} ({'still pending' if state == 'pending' else state})"
    )


@app.command("plan")
def plan_command(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
    full: bool = typer.Option(
        False, "--full", help="Every open conversation too, not only those changed since the last poll"
    ),
) -> None:
    """Dry run: poll once and print what would be done. Calls no mutating endpoint, claims nothing."""
    from worker.cli.plan_view import collect, render_text
    from worker.runtime import Runtime
    from worker.scheduling.tick import Loop

    settings = settings_or_exit(needs_token=True)
    rules = rulebook_or_exit(settings.rules_path)

    class _Keep:
        steps: list[Step] = []

        def enqueue(self, step: Step) -> None:
            self.steps.append(step)

    runtime = Runtime.build(settings, rulebook=rules)
    loop = Loop(runtime, _Keep(), dry_run=True)
    pages = loop.poller.changed(loop.watermark.load(), loop.budget())
    changed = [c for page in pages for c in page.conversations]
    # --full adds the open conversations to the changed ones: never fewer than `plan` alone.
    opened = _open_conversations(loop) if full else []
    wanted = list({c.id: c for c in [*opened, *changed]}.values())
    with progress("evaluating conversations", len(wanted) if full else None) as advance:
        loop.on_read = advance if full else None  # progress on a terminal; the plain plan is quick
        report = loop.process(wanted, "resync" if full else "incremental")
    now = runtime.clock.now()
    firings = collect(report.steps, report.deferred, {c.id: c for c in wanted}, rules.ruleset, now)
    planned = sum(len(s.items) for s in report.steps)
    deferred = sum(1 for f in firings for a in f.actions.values() if a.deferred is not None)
    if as_json:
        data = {
            "conversations": report.conversations,
            "open": len(opened) if full else None,
            "changed": len(changed),
            "actions_planned": planned,
            "firings": [f.to_dict() for f in firings],
            "deferred": [
                {"key": a.key, "rule": f.rule_id, "conversation": f.conversation_id, "reason": a.deferred}
                for f in firings
                for a in f.actions.values()
                if a.deferred is not None
            ],
        }
        typer.echo(json.dumps(data, indent=2))
        return
    scope = f"{len(opened)} open, {len(changed)} changed" if full else "changed since the last poll"
    headline = (
        f"{report.conversations} conversations evaluated ({scope}): "
        f"{planned} actions planned in {len(firings)} firings, {deferred} deferred"
    )
    for line in render_text(headline, firings):
        typer.echo(line)


def _open_conversations(loop: Loop) -> list[Conversation]:
    with progress("reading open conversations", None) as advance:
        opened = []
        for page in loop.poller.open_conversations(loop.resync_budget()):
            opened.extend(page)
            advance(len(page))
    return opened


def _paused_until(
    shared: redis.Redis, settings: Settings, conversation: int, now: datetime
) -> datetime | None:
    """Until when the loop breaker keeps automation off this conversation (at `now`)."""
    breaker = Breaker(
        shared,
        FakeClock(now),  # read-only: `now` is the time explain evaluates at
        max_firings=settings.breaker_max_firings,
        window_s=settings.breaker_window_s,
        pause_s=settings.breaker_pause_s,
    )
    return breaker.paused([conversation]).get(conversation)


def _fired_before(shared: redis.Redis, ttl_s: int, evaluation: Evaluation) -> list[dict[str, str]]:
    """Matches whose firing the worker's ledger already holds: explain must not say they will fire."""
    ledger = Ledger(shared, SystemClock(), ttl_s=ttl_s)
    found = []
    for match in evaluation.matches:
        entry = ledger.get(item_key(match.firing_key, 0))
        if entry is not None:
            at = f"{entry.claimed_at:%Y-%m-%d %H:%M:%S}Z"
            found.append({"rule": match.rule_id, "key": match.firing_key, "state": entry.state, "at": at})
    return found
