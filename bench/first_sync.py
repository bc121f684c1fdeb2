"""Benchmark 8, the first sync beside the naive poller (issue 17.4): how long after starting on an
empty Redis the worker has applied every firing the seeded inbox calls for, at the default
client rate limit, beside a full-scan script that applies the same firings one call each.

    python -m bench.first_sync [--quick] [--no-save] [--n N] [--timeout S]
    BENCH_REDIS_URL=redis://127.0.0.1:6379/9 python -m bench.first_sync

Each run gets its own `inboxpilot sandbox --strict` (own process, system clock, documented
fields only) seeded with the same N conversations. The rule file is what an outsider would
write: assign the unassigned, move a customer waiting over an hour to the escalation stage,
note tagged conversations, follow up a customer silent a day after the team's reply (their
name in the text). Firings are (rule, conversation) pairs, counted from the simulator's
audit log: a bulk call applies one per id, a PATCH or a send one.

- ours: `App.build` with default settings (20 req/s shared by the scheduler's reads and the
  workers' writes, as `inboxpilot run` has them in one process), the scheduler service and
  8 dramatiq worker threads, started on an empty Redis. Expected firings are read with a scan
  (not counted) just before it starts.
- naive: a script that pages through every conversation, decides the same rules on the
  records, reads the follow-ups' contacts (`id[$in]`, 50 a find) and applies each firing with
  one PATCH or POST, through the same 20 req/s token bucket.

Time to first write and to settle are the simulator's audit times minus the run's start.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from dramatiq.worker import WorkerThread

from bench.common import (
    TOKEN,
    CountingTransport,
    Sandbox,
    Table,
    _service,
    arguments,
    bench_redis_url,
    command_line,
    flush,
    load_note,
    parse_time,
    report,
    sandbox_process,
)
from bench.naive import NaivePoller
from worker.api.ratelimit import TokenBucket
from worker.api.services import SEND_PATHS
from worker.app import App
from worker.clock import SystemClock
from worker.config import Settings, load_settings

OWNER = 101
PIPELINE, ESCALATED = 1, 14
NOTE_TAGS = ("vip", "urgent", "billing", "support", "returning")
FOLLOW_UP_CHANNELS = ("webchat", "sms", "playground")  # no 24-hour window to close
WAITING = timedelta(hours=1)
SILENT = timedelta(hours=24)
NOTE = "Flagged on arrival: check the customer's history first."
FOLLOW_UP = "Hi {name}, just checking in: did our last message answer your question?"
THREADS = 8  # `inboxpilot run --threads` default
KINDS = ("assign", "move", "note", "reply")
BULK_PATH = "/conversations-bulk-actions"
SEND_ENDPOINTS = frozenset(SEND_PATHS.values())
GOAL_RATIO = 2.0
PROGRESS_S = 15.0

RULES = f"""
rules:
  - id: assign-new
    once: per_conversation
    when: {{status: open, owner: unset}}
    then:
      - assign: {OWNER}
  - id: escalate-waiting
    once: per_inbound_message
    when: {{status: open, waiting_for_reply: {{longer_than: 1h}}}}
    then:
      - move: {{pipeline: {PIPELINE}, stage: {ESCALATED}}}
  - id: flag-tagged
    once: per_conversation
    when: {{status: open, tags: {{any: [{", ".join(NOTE_TAGS)}]}}}}
    then:
      - note: "{NOTE}"
  - id: follow-up
    once: per_team_reply
    when:
      status: open
      channel: [{", ".join(FOLLOW_UP_CHANNELS)}]
      silent_after_reply: {{longer_than: 24h}}
    then:
      - reply: "{FOLLOW_UP.format(name="{{ contact.first_name }}")}"
"""

Record = dict[str, Any]
Plan = dict[str, list[Record]]  # kind -> the conversations that kind of firing applies to
Key = tuple[str, int]  # (kind, conversation id)


# --- what should fire: the naive script's own reading of the rules ---------------------------


def plan(records: Sequence[Record], now: datetime) -> Plan:
    """The firings the rules call for, decided on the conversation records alone."""
    out: Plan = {kind: [] for kind in KINDS}
    for record in records:
        if record["status"] != "open":
            continue
        inbound, outbound = _at(record, "last_inbound_at"), _at(record, "last_outbound_at")
        if record["owner_id"] is None:
            out["assign"].append(record)
        waiting = inbound is not None and (outbound is None or outbound < inbound)
        escalated = (record["pipeline_id"], record["pipeline_stage_id"]) == (PIPELINE, ESCALATED)
        if waiting and not escalated and now - inbound >= WAITING:
            out["move"].append(record)
        if set(record["tags"]) & set(NOTE_TAGS):
            out["note"].append(record)
        silent = outbound is not None and (inbound is None or inbound < outbound)
        if silent and record["channel"] in FOLLOW_UP_CHANNELS and now - outbound >= SILENT:
            out["reply"].append(record)
    return out


def _at(record: Record, name: str) -> datetime | None:
    value = record.get(name)
    return parse_time(value) if value else None


def keys(found: Plan) -> set[Key]:
    return {(kind, int(r["id"])) for kind, records in found.items() for r in records}


# --- what was applied: the simulator's audit log ---------------------------------------------


def effects(entry: Mapping[str, Any]) -> list[Key]:
    """The firings one applied audit entry carries (a bulk call: one per id)."""
    if not entry["applied"]:
        return []
    body, path = entry["body"] or {}, entry["path"]
    if path == BULK_PATH:
        kind = {"assign": "assign", "move": "move"}.get(body.get("action"))
        return [(kind, int(i)) for i in body.get("conversation_ids", [])] if kind else []
    if path in SEND_ENDPOINTS:
        return [("note" if body.get("message_type") == "note" else "reply", int(body["conversation_id"]))]
    if entry["method"] == "PATCH" and path.startswith("/conversations/"):
        cid = int(path.rsplit("/", 1)[1])
        return [(k, cid) for k, f in (("assign", "owner_id"), ("move", "pipeline_stage_id")) if f in body]
    return []


@dataclass
class Watch:
    """Follows the audit log: when each firing was first applied, and repeats."""

    sandbox: Sandbox
    cursor: int = 0
    applied: dict[Key, datetime] = field(default_factory=dict)
    repeats: Counter[Key] = field(default_factory=Counter)
    first_write: datetime | None = None

    @classmethod
    def from_now(cls, sandbox: Sandbox) -> Watch:
        entries = sandbox.audit(0)
        return cls(sandbox, max([0, *(int(e["seq"]) for e in entries)]))

    def read(self) -> None:
        for entry in self.sandbox.audit(self.cursor):
            self.cursor = max(self.cursor, int(entry["seq"]))
            for key in effects(entry):
                at = parse_time(entry["time"])
                self.first_write = self.first_write or at
                if key in self.applied:
                    self.repeats[key] += 1
                else:
                    self.applied[key] = at

    def settled_at(self, expected: set[Key]) -> datetime | None:
        if not expected <= self.applied.keys():
            return None
        return max((self.applied[k] for k in expected), default=self.first_write)


class ByRole(CountingTransport):
    """Counts as CountingTransport does, and also by who asked: the dramatiq worker threads
    (executing steps) or the scheduler (polls, resyncs, timers, re-drives)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_role: Counter[tuple[str, str, str]] = Counter()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        role = "workers" if isinstance(threading.current_thread(), WorkerThread) else "scheduler"
        self.by_role[(role, request.method, _service(request.url.path))] += 1
        return response

    def role(self, name: str) -> Counter[tuple[str, str]]:
        return Counter({(m, p): n for (r, m, p), n in self.by_role.items() if r == name})


# --- one run ----------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    expected: set[Key]
    started: datetime
    watch: Watch
    requests: Counter[tuple[str, str]]
    at_first_write: Counter[tuple[str, str]]
    cpu_s: float
    open_n: int
    roles: dict[str, Counter[tuple[str, str]]] = field(default_factory=dict)

    @property
    def settled_s(self) -> float | None:
        at = self.watch.settled_at(self.expected)
        return (at - self.started).total_seconds() if at else None

    @property
    def first_write_s(self) -> float | None:
        at = self.watch.first_write
        return (at - self.started).total_seconds() if at else None

    def missing(self) -> int:
        return len(self.expected - self.watch.applied.keys())

    def extra(self) -> int:
        return len(self.watch.applied.keys() - self.expected)


def rate_of(settings: Settings) -> TokenBucket:
    return TokenBucket(settings.rate_limit_per_s, settings.rate_burst, SystemClock())


def scan(sandbox: Sandbox) -> list[Record]:
    """Every conversation as the API serves it (the harness's own reads: not counted)."""
    with httpx.Client(base_url=sandbox.url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        return NaivePoller(client).tick()


@dataclass
class Progress:
    """One line on stderr every PROGRESS_S: a long run shows where it is."""

    started: datetime
    shown: int = 0

    def __call__(self, watch: Watch, expected: set[Key], requests: Counter[tuple[str, str]]) -> None:
        elapsed = (datetime.now(UTC) - self.started).total_seconds()
        if elapsed < (self.shown + 1) * PROGRESS_S:
            return
        self.shown = int(elapsed / PROGRESS_S)
        left = Counter(kind for kind, _ in expected - watch.applied.keys())
        print(f"[{elapsed:5.0f} s] left {dict(left)}, requests {_kinds(requests)}", file=sys.stderr)


def until(done: Callable[[], bool], timeout_s: float, every_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(every_s)  # polling the audit log with a deadline


def ours(n: int, timeout_s: float) -> Run:
    with sandbox_process(seed=n, strict=True) as sandbox, tempfile.TemporaryDirectory() as tmp:
        redis_url = bench_redis_url()
        flush(redis_url)
        rules_path = Path(tmp) / "rules.yaml"
        rules_path.write_text(RULES)
        records = scan(sandbox)
        expected = keys(plan(records, datetime.now(UTC)))
        watch = Watch.from_now(sandbox)
        counting = ByRole()
        settings = load_settings(
            api_url=sandbox.url, api_token=TOKEN, redis_url=redis_url, rules_path=rules_path,
            log_level="WARNING",
        )  # fmt: skip
        app = App.build(settings, transport=counting)
        cpu, started = time.process_time(), datetime.now(UTC)
        at_first_write: Counter[tuple[str, str]] = Counter()
        progress = Progress(started)
        with running(app):

            def done() -> bool:
                watch.read()
                if watch.first_write and not at_first_write:
                    at_first_write.update(counting.requests)
                progress(watch, expected, counting.requests)
                return watch.settled_at(expected) is not None

            until(done, timeout_s)
            requests = Counter(counting.requests)
            roles = {name: counting.role(name) for name in ("scheduler", "workers")}
        if missing := sorted(expected - watch.applied.keys()):
            print(f"never applied (first 20): {missing[:20]}", file=sys.stderr)
        open_n = sum(1 for r in records if r["status"] == "open")
        cpu_s = time.process_time() - cpu
        return Run("ours", expected, started, watch, requests, at_first_write, cpu_s, open_n, roles)


@contextlib.contextmanager
def running(app: App) -> Iterator[None]:
    """What `inboxpilot run` starts in one process: the scheduler service and worker threads."""
    with contextlib.ExitStack() as stack:
        stack.callback(app.close)
        worker = app.worker(THREADS)
        worker.start()
        stack.callback(worker.stop)
        scheduler = app.scheduler()
        scheduler.start()
        stack.callback(scheduler.shutdown)
        yield


def naive(n: int, timeout_s: float) -> Run:
    with sandbox_process(seed=n, strict=True) as sandbox:
        watch = Watch.from_now(sandbox)
        counting = CountingTransport()
        bucket = rate_of(load_settings(api_token=TOKEN))
        hooks = {"request": [lambda _request: bucket.acquire()]}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        cpu, started = time.process_time(), datetime.now(UTC)
        with httpx.Client(
            base_url=sandbox.url, headers=headers, transport=counting, event_hooks=hooks, timeout=60
        ) as client:
            poller = NaivePoller(client)
            records = poller.tick()
            found = plan(records, datetime.now(UTC))
            apply(poller, found)
        expected = keys(found)
        until(lambda: (watch.read(), watch.settled_at(expected))[1] is not None, timeout_s)
        open_n = sum(1 for r in records if r["status"] == "open")
        return Run("naive", expected, started, watch, Counter(counting.requests), Counter(),
                   time.process_time() - cpu, open_n)  # fmt: skip


def apply(poller: NaivePoller, found: Plan) -> None:
    """One call per firing: PATCH the record, or POST the note or follow-up."""
    poller.act([r["id"] for r in found["assign"]], {"owner_id": OWNER})
    poller.act([r["id"] for r in found["move"]], {"pipeline_id": PIPELINE, "pipeline_stage_id": ESCALATED})
    for record in found["note"]:
        poller.send(record, NOTE, "note")
    people = poller.contacts(r["contact_id"] for r in found["reply"])
    for record in found["reply"]:
        name = (people.get(record["contact_id"]) or {}).get("name", "").split(" ")[0] or "there"
        poller.send(record, FOLLOW_UP.format(name=name))


# --- the report -------------------------------------------------------------------------------


def by_kind(requests: Counter[tuple[str, str]]) -> dict[str, int]:
    """Requests grouped the way the issue talks about them."""
    out: Counter[str] = Counter()
    for (method, path), count in requests.items():
        if path.startswith("/conversation-messages-") and method == "GET":
            out["GET messages"] += count
        elif path in SEND_ENDPOINTS or path.startswith("/conversation-messages-"):
            out["POST send/note"] += count
        else:
            out[f"{method} {path}"] += count
    return dict(out)


REQUEST_KINDS = (
    "GET /conversations", "GET messages", "GET /contacts", f"POST {BULK_PATH}", "POST send/note",
    "PATCH /conversations",
)  # fmt: skip


def table(runs: Sequence[Run]) -> Table:
    out = Table(
        ["run", "open conv.", "expected firings", "applied", "missing", "repeats", "extra",
         "first write s", "settled s", "requests", *REQUEST_KINDS, "other", "CPU s"]
    )  # fmt: skip
    for r in runs:
        kinds = by_kind(r.requests)
        shown = [kinds.get(k, 0) for k in REQUEST_KINDS]
        out.add(
            r.name, r.open_n, len(r.expected), len(r.expected & r.watch.applied.keys()), r.missing(),
            sum(r.watch.repeats.values()), r.extra(), _s(r.first_write_s), _s(r.settled_s),
            sum(r.requests.values()), *shown, sum(kinds.values()) - sum(shown), r.cpu_s,
        )  # fmt: skip
    return out


def role_table(run: Run) -> Table:
    out = Table(["who asked", "requests", *REQUEST_KINDS, "other"])
    for name, requests in run.roles.items():
        kinds = by_kind(requests)
        shown = [kinds.get(k, 0) for k in REQUEST_KINDS]
        out.add(name, sum(requests.values()), *shown, sum(kinds.values()) - sum(shown))
    return out


def _s(value: float | None) -> Any:
    return "never" if value is None else value


def verdict(ours_run: Run, naive_run: Run) -> str:
    if ours_run.settled_s is None or naive_run.settled_s is None:
        return "ratio: not settled within the timeout"
    ratio = ours_run.settled_s / naive_run.settled_s
    met = "met" if ratio <= GOAL_RATIO else "**not met**"
    return f"settle ratio ours/naive = {ratio:.2f} (goal ≤ {GOAL_RATIO:g}): {met}"


def firing_mix(run: Run) -> str:
    counts = Counter(kind for kind, _ in run.expected)
    return ", ".join(f"{kind} {counts[kind]:,}" for kind in KINDS)


def main(argv: Sequence[str] | None = None) -> tuple[Run, Run]:
    args = arguments(__doc__ or "", argv, _options)
    n = args.n or (200 if args.quick else 1_900)
    load = load_note()
    naive_run = naive(n, args.timeout)
    ours_run = ours(n, args.timeout)
    first = ours_run.at_first_write
    notes = [
        verdict(ours_run, naive_run),
        f"{n:,} seeded conversations (`inboxpilot sandbox --strict --seed {n}`), firings: "
        f"{firing_mix(ours_run)} (rules in `bench/first_sync.py`).",
        "ours = `App.build`, default settings (20 req/s, burst 20, poll 2 s, resync 600 s), scheduler "
        f"service + {THREADS} worker threads in one process, empty Redis; naive = full scan, one "
        "PATCH/POST per firing, the same token bucket.",
        f"ours, requests before the first write: {sum(first.values()):,} ({_kinds(first)}).",
        "repeats = firings applied more than once (a bulk id or a send seen again in the audit log); "
        "extra = firings applied beyond the expected set (a conversation crossing 1 h or 24 h "
        "during the run).",
        load + f"; at the end {os.getloadavg()[0]:.1f}",
    ]
    report(
        "First sync beside the naive poller (benchmark 8, issue 17.4)",
        command_line("bench.first_sync", argv),
        [("", table([ours_run, naive_run])), ("Ours until settled, by who asked", role_table(ours_run))],
        notes,
        save=not args.no_save,
    )
    return ours_run, naive_run


def _kinds(requests: Counter[tuple[str, str]]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(by_kind(requests).items()))


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=0, help="seeded conversations (default 1,900; quick 200)")
    parser.add_argument("--timeout", type=float, default=1_500.0, help="seconds each run may take")


if __name__ == "__main__":
    main()
