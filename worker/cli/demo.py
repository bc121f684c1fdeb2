"""`inboxpilot demo`: the whole loop on one machine with nothing but Python.

Starts the simulator with seeded conversations, the embedded Redis, the rules
(the same `INBOXPILOT_*` settings as `run`: rules path, config file), a
scheduler and worker threads; customers "write in" through the simulator while
the demo prints each firing in plain words as it completes: who, what, why.
Ends on Ctrl-C or after `--for`, with a summary by rule.

Simulator and worker share their own clock (`ShiftedClock`): it starts at a
business-hours morning (`--start`) and runs at real speed, so assignments to
people, SLA escalations and follow-ups show up in the first seconds whatever
the hour the demo is run at.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

import typer

from worker.api.errors import ApiError
from worker.app import App
from worker.cli import app
from worker.cli.common import rulebook_or_exit, settings_or_exit
from worker.cli.words import agent_name, clip, firing_verb, is_followup, pool_words, step_words, why_words
from worker.clock import Clock, ShiftedClock
from worker.logs import configure_logging
from worker.rules.context import EvalContext
from worker.rules.durations import DurationError, parse_duration
from worker.rules.firing import Step, action_index, firing_of
from worker.rules.model import RuleSet
from worker.scheduling.snapshots import SnapshotReader
from worker.simulator import Simulator, serve
from worker.state.ledger import AUDIT_STREAM, LedgerEntry
from worker.state.redis_conn import connect
from worker.state.sla_pauses import SlaPauses

DEMO_TOKEN = "demo-token"
# A Tuesday morning in the support team's hours (rules/calendars.yaml), no holiday.
DEFAULT_START = "2026-11-03T10:30:00+01:00"
# A firing whose actions are not all final after this long is printed with what it has.
FLUSH_AFTER_S = 3.0
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
    rules: Path | None = typer.Option(
        None, "--rules", help="Rule file or folder (default: INBOXPILOT_RULES_PATH, else ./rules)"
    ),
    every: float = typer.Option(2.0, "--every", min=0.1, help="Seconds between customer events"),
    start: str = typer.Option(
        DEFAULT_START, "--start", help="Simulated time the demo starts at (ISO 8601 with offset)"
    ),
) -> None:
    """Run simulator + worker together and watch what fires and why."""
    seconds = _seconds(run_for)
    began = _start(start)
    clock = ShiftedClock(began)
    sim = Simulator(token=DEMO_TOKEN, clock=clock)
    sim.seed(seed, seed=7)
    with serve(sim.app) as server:
        # The demo's own simulator and in-process Redis; everything else as `run` reads it.
        settings = settings_or_exit(
            api_url=server.url, api_token=DEMO_TOKEN, redis_url="", broker_url="", rules_path=rules,
            poll_interval_s=1.0, rate_limit_per_s=500, rate_burst=200,
        )  # fmt: skip
        configure_logging("WARNING", "console")
        connect("").flushall()  # the embedded Redis starts empty
        book = rulebook_or_exit(settings.rules_path)
        built = App.build(settings, rulebook=book, clock=clock)
        typer.echo(f"simulator on {server.url} with {seed} conversations; {len(book.ruleset.rules)} rules")
        typer.echo(
            f"simulated clock starts at {began:%a %Y-%m-%d %H:%M} (UTC{began:%z}) and runs at real speed\n"
        )
        _run(built, sim, seconds, every, began.tzinfo)
        built.close()


def _run(built: App, sim: Simulator, seconds: float | None, every: float, zone: tzinfo | None) -> None:
    stop = threading.Event()
    narrator = Narrator(built, sim, zone)
    worker = built.worker(4)
    scheduler = built.scheduler()
    worker.start()
    scheduler.start()
    threads = [
        threading.Thread(target=_customers, args=(sim, stop, every, narrator), daemon=True),
        threading.Thread(target=narrator.watch, args=(stop,), daemon=True),
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
    narrator.drain()
    narrator.summary()


def _seconds(run_for: str | None) -> float | None:
    if run_for is None:
        return None
    try:
        return parse_duration(run_for).total_seconds()
    except DurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--for") from None


def _start(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time", param_hint="--start") from None
    if when.tzinfo is None:
        raise typer.BadParameter(f"{value!r} needs a UTC offset, e.g. +01:00", param_hint="--start")
    return when


def _customers(sim: Simulator, stop: threading.Event, every: float, narrator: Narrator) -> None:
    """Customers write in: new conversations and follow-up messages; agents answer some."""
    rng = random.Random(11)
    channels = ("whatsapp", "instagram", "messenger", "webchat", "sms")
    while not stop.wait(every):
        roll = rng.random()
        if roll < 0.5:
            conv = sim.new_conversation(channel=rng.choice(channels), text=rng.choice(CUSTOMER_LINES))
            narrator.say(f"+ a customer opened conversation {conv['id']} on {conv['channel']}")
        elif roll < 0.8:
            target = rng.choice(_open_ids(sim))
            sim.customer_message(target, rng.choice(CUSTOMER_LINES))
            narrator.say(f"> the customer wrote in conversation {target}")
        else:
            target = rng.choice(_open_ids(sim))
            sim.team_reply(target, "On it!", message_type="note")


def _open_ids(sim: Simulator) -> list[int]:
    with sim.lock:
        return [int(c["id"]) for c in sim.store.conversations.candidates({"status": "open"})] or [1]


@dataclass
class Firing:
    """The items (actions) of one firing seen so far, by action index."""

    key: str
    rule_id: str
    conversation_id: int
    first_seen: float
    entries: dict[int, LedgerEntry] = field(default_factory=dict)
    why: list[str] = field(default_factory=list)


class Narrator:
    """Turns the audit stream into one plain line per firing, and counts for the summary."""

    def __init__(self, built: App, sim: Simulator, zone: tzinfo | None) -> None:
        self.built = built
        self.sim = sim
        self.zone = zone
        self.open: dict[str, Firing] = {}
        self.firings: Counter[str] = Counter()
        self.actions: Counter[tuple[str, str]] = Counter()
        self.jobs: Counter[str] = Counter()
        self._out = threading.Lock()
        self._last = "0-0"

    @property
    def clock(self) -> Clock:
        return self.built.runtime.clock

    @property
    def ruleset(self) -> RuleSet:
        return self.built.runtime.rulebook.ruleset

    def say(self, text: str) -> None:
        with self._out:
            typer.echo(f"{self.clock.now().astimezone(self.zone):%H:%M:%S}  {text}")

    def watch(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.read(block_ms=500)
            self.flush(time.monotonic())

    def drain(self) -> None:
        self.read(block_ms=0)
        self.flush(None)

    def read(self, block_ms: int) -> None:
        redis = self.built.runtime.redis
        streams: Any = redis.xread({AUDIT_STREAM: self._last}, block=block_ms or None) or []
        for _stream, entries in streams:
            for entry_id, fields in entries:
                self._last = entry_id.decode()
                self.add(fields.get(b"key", b"").decode())

    def add(self, item_key: str) -> None:
        entry = self.built.runtime.ledger.get(item_key)
        if entry is None:
            return
        firing_key = firing_of(item_key)
        firing = self.open.get(firing_key)
        if firing is None:
            firing = Firing(firing_key, entry.rule_id, int(entry.conversation_id), time.monotonic())
            firing.why = self._why(entry)
            self.open[firing_key] = firing
        firing.entries[action_index(item_key)] = entry

    def flush(self, now: float | None) -> None:
        """Print firings whose actions are all final (or that waited long enough; all when now is None)."""
        for key, firing in list(self.open.items()):
            rule = self.ruleset.get(firing.rule_id)
            complete = rule is not None and len(firing.entries) >= len(rule.then)
            if complete or now is None or now - firing.first_seen > FLUSH_AFTER_S:
                del self.open[key]
                self._print(firing)

    def _print(self, firing: Firing) -> None:
        self.firings[firing.rule_id] += 1
        for entry in firing.entries.values():
            self.actions[(firing.rule_id, result_of(entry))] += 1
        rule = self.ruleset.get(firing.rule_id)
        verb = firing_verb(rule) if rule is not None else None
        self.jobs[_job(verb, firing, rule is not None and is_followup(rule))] += 1
        what = self.sentence(firing, verb)
        why = "; ".join(firing.why)
        self.say(f"{what}{f' — {why}' if why else ''} — rule {firing.rule_id}")

    def sentence(self, firing: Firing, verb: str | None) -> str:
        conversation = f"conversation {firing.conversation_id}"
        phrases: list[str] = []
        for index in sorted(firing.entries):
            subject = "it" if phrases or verb else conversation
            phrases.append(self.phrase(firing.entries[index], subject))
        if verb:
            return f"{verb} {conversation}: {', '.join(phrases)}"
        return ", then ".join(phrases)

    def phrase(self, entry: LedgerEntry, subject: str) -> str:
        """One action in the past tense: `assigned conversation 14 to Ana`."""
        result = result_of(entry)
        if result == "failed":
            return f"FAILED to {self._present(entry)} {subject} ({entry.reason})"
        if result == "skipped":
            return f"skipped '{self._present(entry)}' on {subject} ({entry.outcome.get('reason', '')})"
        bulk = entry.payload.get("bulk")
        if bulk:
            return _bulk_past(bulk["action"], bulk.get("fields") or {}, subject, self.ruleset)
        return self._message_past(entry, subject)

    def _present(self, entry: LedgerEntry) -> str:
        bulk = entry.payload.get("bulk")
        if bulk:
            return str(bulk["action"]).replace("_", " ")
        return str((entry.payload.get("action") or {}).get("type", "act"))

    def _message_past(self, entry: LedgerEntry, subject: str) -> str:
        action = entry.payload.get("action") or {}
        kind = action.get("type")
        if kind == "run_automation":
            return f"ran automation {action.get('automation_id')} on {subject}"
        if kind not in ("reply", "note"):  # e.g. tag changes: their own words
            try:
                words = step_words(Step.from_dict(entry.payload), self.ruleset, entry.key, entry.rule_id)
            except (KeyError, TypeError, ValueError):
                words = str(kind)
            return f"set {words} on {subject}"
        text = clip(self._sent_text(entry) or str(action.get("text") or action.get("predefined") or ""), 32)
        sent_as = entry.outcome.get("message_type")
        channel = self._channel(int(entry.conversation_id))
        if sent_as == "template":
            return f"sent template {action.get('template')} on {channel} to {subject}"
        if sent_as == "note" or kind == "note":
            return f'noted "{text}"' + ("" if subject == "it" else f" on {subject}")
        return f'replied "{text}" on {channel} to {subject}'

    def _sent_text(self, entry: LedgerEntry) -> str | None:
        message_id = entry.outcome.get("message_id")
        if not message_id:
            return None
        for message in self.sim.messages(int(entry.conversation_id)):
            if message.get("_id") == message_id:
                return str(message.get("message_text") or "")
        return None

    def _channel(self, conversation_id: int) -> str:
        try:
            return str(self.sim.conversation(conversation_id)["channel"])
        except Exception:  # a deleted conversation: the line still prints
            return "its channel"

    def _why(self, entry: LedgerEntry) -> list[str]:
        """Pools and the timing conditions behind the firing, as they stood when it was claimed."""
        rule = self.ruleset.get(entry.rule_id)
        if rule is None:
            return []
        pools = [p for a in rule.then if (p := pool_words(self.ruleset, a)) is not None]
        runtime = self.built.runtime
        try:
            record = runtime.api.conversations.get(int(entry.conversation_id))
            reader = SnapshotReader(runtime.api, SlaPauses(runtime.redis))
            snapshot = reader.read_one(self.ruleset, record, entry.claimed_at)
        except ApiError:
            return pools
        if snapshot is None:
            return pools
        ctx = EvalContext(record, entry.claimed_at, snapshot.messages, snapshot.contact, snapshot.sla_pauses)
        return [*dict.fromkeys(pools), *why_words(rule, ctx)]

    def summary(self) -> None:
        typer.echo("\nsummary by rule: firings, and their actions by outcome")
        typer.echo(f"  {'rule':<36} {'firings':>7} {'actions done':>13} {'skipped':>8} {'failed':>7}")
        for rule in sorted(self.firings):
            done, skipped, failed = (self.actions[(rule, r)] for r in ("done", "skipped", "failed"))
            typer.echo(f"  {rule:<36} {self.firings[rule]:>7} {done:>13} {skipped:>8} {failed:>7}")
        typer.echo(
            f"\njobs: {self.jobs['assignment']} assignment(s) to people, {self.jobs['sla']} SLA "
            f"escalation(s)/warning(s), {self.jobs['followup']} follow-up(s), {self.jobs['other']} other"
        )
        calls = Counter(f"{e.method} {e.path}" for e in self.sim.audit_log())
        typer.echo(f"API writes made: {sum(calls.values())} ({', '.join(_short_calls(calls))})")


def result_of(entry: LedgerEntry) -> str:
    """done / skipped / failed for a final ledger item (skips are recorded as done + result)."""
    if entry.state == "failed":
        return "failed"
    if entry.state == "pending":
        return "pending"
    return str(entry.outcome.get("result", "done"))


BULK_PAST = {
    "assign": "assigned {s} to {who}",
    "unassign": "unassigned {s}",
    "assign_ai_assistant": "handed {s} to AI assistant {ai}",
    "unassign_ai_assistant": "took the AI assistant off {s}",
    "move": "moved {s} to pipeline {pipeline} stage {stage}",
}


def _bulk_past(action: str, fields: dict[str, Any], subject: str, ruleset: RuleSet) -> str:
    if action == "update_status":
        return f"{'closed' if fields.get('status') == 'closed' else 'reopened'} {subject}"
    template = BULK_PAST.get(action, action.replace("_", " ") + " {s}")
    return template.format(
        s=subject,
        who=agent_name(ruleset, fields.get("owner_id")),
        ai=fields.get("ai_assistant_id"),
        pipeline=fields.get("pipeline_id"),
        stage=fields.get("pipeline_stage_id"),
    )


def _job(verb: str | None, firing: Firing, followup: bool) -> str:
    if verb is not None:
        return "sla"
    assigned = any(
        (e.payload.get("bulk") or {}).get("action") == "assign" and result_of(e) == "done"
        for e in firing.entries.values()
    )
    if assigned:
        return "assignment"
    return "followup" if followup else "other"


def _short_calls(calls: Counter[str]) -> list[str]:
    return [f"{count} {call}" for call, count in calls.most_common(4)]
