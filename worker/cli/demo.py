"""`inboxpilot demo`: the whole loop on one machine with nothing but Python.

Starts the simulator with seeded conversations, the embedded Redis, the shipped
rules, a scheduler and worker threads; customers "write in" through the
simulator while the demo prints each firing as it completes (rule, conversation,
action, API result). Ends on Ctrl-C or after `--for`, with a summary table.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from worker.app import App
from worker.cli import app
from worker.cli.common import rulebook_or_exit
from worker.config import SettingsError, load_settings
from worker.logs import configure_logging
from worker.rules.durations import DurationError, parse_duration
from worker.simulator import Simulator, serve
from worker.state.ledger import AUDIT_STREAM, read_audit
from worker.state.redis_conn import connect

DEMO_TOKEN = "demo-token"
CUSTOMER_LINES = (
    "Hi, my order has not arrived",
    "Can I change my delivery address?",
    "Is anyone there?",
    "I want a refund please",
    "Thanks!",
)


@app.command("demo")
def demo(
    run_for: str | None = typer.Option(None, "--for", help="Stop by itself after this long, e.g. 60s"),
    seed: int = typer.Option(40, "--seed", help="Conversations in the simulator at start"),
    rules: Path = typer.Option(Path("rules"), "--rules", help="Rule file or folder"),
    every: float = typer.Option(2.0, "--every", min=0.1, help="Seconds between customer events"),
) -> None:
    """Run simulator + worker together and watch what fires and why."""
    seconds = _seconds(run_for)
    configure_logging("WARNING", "console")

    sim = Simulator(token=DEMO_TOKEN)
    sim.seed(seed, seed=7)
    with serve(sim.app) as server:
        try:
            settings = load_settings(
                api_url=server.url, api_token=DEMO_TOKEN, redis_url="", rules_path=rules,
                poll_interval_s=1.0, rate_limit_per_s=500, rate_burst=200,
            )  # fmt: skip
        except SettingsError as exc:
            typer.echo(f"inboxpilot: {exc}", err=True)
            raise typer.Exit(2) from None
        connect("").flushall()  # the embedded Redis starts empty
        book = rulebook_or_exit(settings.rules_path)
        built = App.build(settings, rulebook=book)
        typer.echo(f"simulator on {server.url} with {seed} conversations; {len(book.ruleset.rules)} rules")
        typer.echo("watching: time, rule, conversation, action, result (Ctrl-C to stop)\n")
        stop = threading.Event()
        worker = built.worker(4)
        scheduler = built.scheduler()
        worker.start()
        scheduler.start()
        threads = [
            threading.Thread(target=_customers, args=(sim, stop, every), daemon=True),
            threading.Thread(target=_watch, args=(built, stop), daemon=True),
        ]
        for thread in threads:
            thread.start()
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait(seconds)
        stop.set()
        scheduler.shutdown()
        worker.stop()
        for thread in threads:
            thread.join(timeout=5)
        _summary(built, sim)
        built.close()


def _seconds(run_for: str | None) -> float | None:
    if run_for is None:
        return None
    try:
        return parse_duration(run_for).total_seconds()
    except DurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--for") from None


def _customers(sim: Simulator, stop: threading.Event, every: float) -> None:
    """Customers write in: new conversations and follow-up messages; agents answer some."""
    rng = random.Random(11)
    channels = ("whatsapp", "instagram", "messenger", "webchat", "sms")
    while not stop.wait(every):
        roll = rng.random()
        if roll < 0.5:
            conv = sim.new_conversation(channel=rng.choice(channels), text=rng.choice(CUSTOMER_LINES))
            typer.echo(f"{time.strftime('%H:%M:%S')}  + customer opened conversation {conv['id']}")
        elif roll < 0.8:
            target = rng.choice(_open_ids(sim))
            sim.customer_message(target, rng.choice(CUSTOMER_LINES))
            typer.echo(f"{time.strftime('%H:%M:%S')}  > customer wrote in conversation {target}")
        else:
            target = rng.choice(_open_ids(sim))
            sim.team_reply(target, "On it!", message_type="note")


def _open_ids(sim: Simulator) -> list[int]:
    with sim.lock:
        return [int(c["id"]) for c in sim.store.conversations.candidates({"status": "open"})] or [1]


def _watch(built: App, stop: threading.Event) -> None:
    """Print each final ledger outcome as it lands in the audit stream."""
    last = "0-0"
    redis = built.runtime.redis
    while not stop.is_set():
        streams: Any = redis.xread({AUDIT_STREAM: last}, block=500) or []
        for _stream, entries in streams:
            for entry_id, fields in entries:
                last = entry_id.decode()
                typer.echo(_line(built, {k.decode(): v.decode() for k, v in fields.items()}))


def _line(built: App, fields: dict[str, str]) -> str:
    entry = built.runtime.ledger.get(fields.get("key", ""))
    what = "?"
    if entry is not None:
        payload = entry.payload
        what = (payload.get("bulk") or {}).get("action") or (payload.get("action") or {}).get("type", "?")
    result = fields.get("outcome") or fields.get("reason") or ""
    return (
        f"{time.strftime('%H:%M:%S')}  {fields.get('rule_id', '?'):<28} conversation "
        f"{fields.get('conversation_id', '?'):<5} {what:<20} {fields.get('state', '?')} {result[:60]}"
    )


def _summary(built: App, sim: Simulator) -> None:
    outcomes = Counter((e.get("rule_id", "?"), _result(e)) for e in read_audit(built.runtime.redis))
    calls = Counter(f"{e.method} {e.path}" for e in sim.audit_log())
    typer.echo("\nsummary: firings by rule")
    typer.echo(f"  {'rule':<32} {'done':>6} {'skipped':>8} {'failed':>7}")
    for rule in sorted({r for r, _ in outcomes}):
        done, skipped, failed = (outcomes[(rule, r)] for r in ("done", "skipped", "failed"))
        typer.echo(f"  {rule:<32} {done:>6} {skipped:>8} {failed:>7}")
    typer.echo("\nsummary: API writes made (simulator audit log)")
    for call, count in calls.most_common():
        typer.echo(f"  {call:<60} {count:>6}")


def _result(entry: dict[str, str]) -> str:
    """done / skipped (moot, outside the window...) / failed, from an audit entry."""
    if entry.get("state") != "done":
        return "failed"
    try:
        return str(json.loads(entry.get("outcome") or "{}").get("result", "done"))
    except ValueError:
        return "done"
