"""`inboxpilot firings`: the history of what fired, from the worker's ledger (read-only).

One line per firing: when, rule, conversation, its outcome, then each action
with its target or text and its outcome, and the reason for a skipped or
failed one. Filters by rule, conversation, outcome and time; `--json` for
tools. History goes back the ledger TTL (`INBOXPILOT_LEDGER_TTL_S`, 30 days by
default; worker/state/history.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum

import typer

from worker.cli import app
from worker.cli.common import settings_or_exit
from worker.cli.words import clip, rule_action, step_words
from worker.rules.durations import DurationError, parse_duration
from worker.rules.errors import RulesInvalid
from worker.rules.firing import Step
from worker.rules.model import RuleSet
from worker.state.history import ActionRecord, FiringRecord, HistoryQuery, read_history
from worker.state.redis_conn import connect

REASON_CHARS = 90


class OutcomeChoice(StrEnum):
    done = "done"
    skipped = "skipped"
    failed = "failed"
    pending = "pending"


@app.command("firings")
def firings(
    rule: str | None = typer.Option(None, "--rule", "-r", help="Only this rule id"),
    conversation: int | None = typer.Option(None, "--conversation", "-c", help="Only this conversation"),
    outcome: OutcomeChoice | None = typer.Option(
        None, "--outcome", "-o", help="Only firings with an action of this outcome"
    ),
    since: str | None = typer.Option(
        None, "--since", help="Only since then: a duration (2h, 7d) or an ISO time"
    ),
    limit: int = typer.Option(50, "--limit", "-n", min=0, help="The newest N firings (0: all)"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
) -> None:
    """What fired, when, with what outcome and why (the worker's ledger; read-only)."""
    settings = settings_or_exit()
    if not settings.redis_url:
        typer.echo("inboxpilot: firings reads the worker's Redis: set INBOXPILOT_REDIS_URL", err=True)
        raise typer.Exit(2)
    now = datetime.now(UTC)
    query = HistoryQuery(rule, conversation, outcome.value if outcome else None, _since(since, now), limit)
    found = read_history(connect(settings.redis_url), query, now, settings.ledger_ttl_s)
    if as_json:
        typer.echo(json.dumps({"firings": [f.to_dict() for f in found]}, indent=2))
        return
    if not found:
        days = settings.ledger_ttl_s / 86400
        typer.echo(f"no firings match (the history keeps the last {days:g} days: INBOXPILOT_LEDGER_TTL_S)")
        return
    ruleset = _ruleset(settings.rules_path)
    for firing in found:
        typer.echo(firing_line(firing, ruleset))


def _since(value: str | None, now: datetime) -> datetime | None:
    if value is None:
        return None
    try:
        return now - parse_duration(value)
    except DurationError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither a duration (2h, 7d) nor an ISO time (2026-11-25T14:30:00Z)",
            param_hint="--since",
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _ruleset(path: object) -> RuleSet:
    """The rules, for agent names and pools; the history shows without them too."""
    from pathlib import Path

    from worker.rules.book import Rulebook

    try:
        return Rulebook(Path(str(path))).ruleset
    except (RulesInvalid, OSError):
        return RuleSet()


def firing_line(firing: FiringRecord, ruleset: RuleSet) -> str:
    """`2026-11-03 10:30:02Z  rule  conversation 14  failed  assign → Ana: done; move → …: failed (why)`."""
    actions = "; ".join(action_text(firing, action, ruleset) for action in firing.ordered())
    return (
        f"{firing.at:%Y-%m-%d %H:%M:%S}Z  {firing.rule_id}  conversation {firing.conversation_id}  "
        f"{firing.outcome.upper() if firing.outcome == 'failed' else firing.outcome}  {actions}"
    )


def action_text(firing: FiringRecord, action: ActionRecord, ruleset: RuleSet) -> str:
    what = _what(firing, action, ruleset)
    if action.outcome in ("skipped", "failed", "pending") and action.reason:
        return f"{what}: {action.outcome} ({clip(action.reason, REASON_CHARS)})"
    extra = _done_detail(action)
    return f"{what}: {action.outcome}{extra}"


def _what(firing: FiringRecord, action: ActionRecord, ruleset: RuleSet) -> str:
    if action.step is not None:
        try:
            step = Step.from_dict(action.step)
        except (KeyError, TypeError, ValueError):
            step = None
        if step is not None:
            return step_words(step, ruleset, action.key, firing.rule_id)
    known = rule_action(ruleset, firing.rule_id, action.key)
    return known.label() if known is not None else f"action #{action.index}"


def _done_detail(action: ActionRecord) -> str:
    """What a done action adds: a reply sent as a note or template, an effect already there."""
    sent = action.detail.get("message_type")
    if sent in ("note", "template") and (action.step or {}).get("action", {}).get("type") == "reply":
        return f" (sent as a {sent}: the 24-hour window was closed)"
    if action.detail.get("already") or action.detail.get("reconciled"):
        return " (already in place)"
    return ""
