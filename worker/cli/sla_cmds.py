"""`inboxpilot sla`: conversations at risk of breaching an SLA, or in breach, with time left.

Reads only: paged finds of open conversations, their messages when a policy
needs them, and the worker's pause record in Redis when it answers. The clock
arithmetic is `worker.rules.sla.clocks`, the same the SLA rules run on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer

from worker.cli import app
from worker.cli.common import rulebook_or_exit, settings_or_exit
from worker.cli.progress import track

if TYPE_CHECKING:
    from worker.api.models import Conversation
    from worker.api.services import Services
    from worker.config import Settings
    from worker.rules.evaluator import Snapshot
    from worker.rules.model import RuleSet
    from worker.rules.sla import SlaClock
    from worker.scheduling.snapshots import SnapshotReader
    from worker.state.sla_pauses import SlaPauses

SHOWN = ("at_risk", "breached")


@app.command("sla")
def sla_command(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
    show_all: bool = typer.Option(False, "--all", help="Every running clock, not only at risk / breached"),
) -> None:
    """List SLA clocks at risk and in breach (time left, or how far over), most urgent first."""
    from worker.api.client import ApiClient
    from worker.api.services import Services

    settings = settings_or_exit(needs_token=True)
    ruleset = rulebook_or_exit(settings.rules_path).ruleset
    if not ruleset.sla_policies:
        typer.echo("inboxpilot: the rules define no sla_policies", err=True)
        raise typer.Exit(1)
    api = Services(ApiClient.from_settings(settings))
    now = datetime.now(UTC)
    # An API failure ends the command through worker.cli.failures (one line, exit 3).
    conversations = list(
        track(api.conversations.find({"status": "open"}), "reading open conversations", None)
    )
    found = sla_clocks(api, ruleset, conversations, now, settings)
    rows = [c for c in found if show_all or c.state in SHOWN]
    typer.echo(render(rows, now, as_json=as_json))


def sla_clocks(
    api: Services, ruleset: RuleSet, conversations: Sequence[Conversation], now: datetime, settings: Settings
) -> list[SlaClock]:
    """Every running clock of `conversations`, most urgent (least time left) first."""
    import redis as redis_lib

    from worker.rules.context import EvalContext
    from worker.rules.sla import clocks
    from worker.scheduling.snapshots import SnapshotReader

    # The loop's reader (batched messages and the pause record); clocks read no contact.
    try:
        reader = SnapshotReader(api, _pauses(settings))
        snapshots = list(
            track(_read(reader, ruleset, conversations, now), "reading messages", len(conversations))
        )
    except redis_lib.RedisError as exc:
        typer.echo(f"inboxpilot: no pause record ({exc}); only current pauses are counted", err=True)
        snapshots = SnapshotReader(api).read(ruleset, conversations, now, contacts=False)
    out: list[SlaClock] = []
    for snap in snapshots:
        ctx = EvalContext(snap.conversation, now, snap.messages, None, snap.sla_pauses)
        out.extend(clocks(ruleset.sla_policies, ctx))
    return sorted(out, key=lambda c: (c.left, c.conversation_id))


def _read(
    reader: SnapshotReader, ruleset: RuleSet, conversations: Sequence[Conversation], now: datetime
) -> Iterator[Snapshot]:
    """Snapshots 500 conversations at a time (10 finds per channel), so progress can show."""
    for start in range(0, len(conversations), 500):
        yield from reader.read(ruleset, conversations[start : start + 500], now, contacts=False)


def _pauses(settings: Settings) -> SlaPauses:
    """The worker's pause record (without Redis only the current pause counts)."""
    from worker.state.redis_conn import connect
    from worker.state.sla_pauses import SlaPauses

    return SlaPauses(connect(settings.redis_url))  # "" is the embedded Redis, as everywhere


def render(rows: Iterable[SlaClock], now: datetime, *, as_json: bool) -> str:
    from worker.rules.sla import describe

    rows = list(rows)
    if as_json:
        return json.dumps({"now": now.isoformat(), "clocks": [r.to_dict() for r in rows]}, indent=2)
    if not rows:
        return "no SLA clock at risk or in breach"
    header = f"{'conversation':>12}  {'policy':<16} {'metric':<15} {'state':<9} {'due (UTC)':<17} time left"
    lines = [header]
    for r in rows:
        due = "paused" if r.due is None else r.due.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
        lines.append(
            f"{r.conversation_id:>12}  {r.policy:<16} {r.metric:<15} {r.state:<9} {due:<17} {describe(r)}"
        )
    return "\n".join(lines)
