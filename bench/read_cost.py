"""Benchmark 7, read cost (issue 14): what the snapshot reader costs, batched vs one by one.

Sections, each beside its naive baseline (the reader as it was: one message read
and one contact read per conversation):

- **resync**: a full pass over N open seeded conversations with the shipped
  rules (what `plan --full` and the scheduler's resync run): requests cold (an
  empty cache), warm (the next resync: nothing moved) and after 1% of the
  conversations got our own reply; goal ≤ 3·ceil(N/50); worker CPU per
  conversation; wall time at the default client rate (20 requests/s) estimated
  as requests / 20 (the rate limiter is the bound; the simulator's own cost is
  shown beside it).
- **commands on 5,000 conversations at the default rate limit**: `plan --full`,
  `backtest --since 7d` and `sla` as the CLI runs them (the same functions), wall
  time measured with the client's default 20 requests/s; goal ≤ 30 s each.
- **sends**: API calls per reply for a tick of k replies (k POSTs plus the
  batched re-check and read-back); goal ≤ 1.1.

    python -m bench.read_cost [--quick] [--max-n 100000]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from bench.common import (
    Bench,
    Collector,
    CountingTransport,
    Table,
    arguments,
    ceil_div,
    command_line,
    lead,
    report,
    served,
    start_watermark_now,
)
from bench.eval_throughput import RULES_DIR
from worker.api.errors import NotFound
from worker.api.models import Contact, Conversation
from worker.api.services import Services
from worker.backtest import fetch_histories, read_ahead, replay
from worker.cli.sla_cmds import sla_clocks
from worker.clock import SystemClock
from worker.execution.execute import execute
from worker.rules.evaluator import Snapshot
from worker.rules.model import RuleSet
from worker.scheduling.tick import Loop

PAGE = 50
T = TypeVar("T")
DEFAULT_RATE = 20.0  # the client's default requests per second (worker/config.py)
COMMAND_N = 5_000
REPLY_RULES = """
rules:
  - id: ack
    once: per_inbound_message
    when: {status: open, waiting_for_reply: {longer_than: 1m}}
    then:
      - reply: "Thanks, we are on it."
"""


SHIPPED = {"rules_path": RULES_DIR}  # the shipped rule folder (rules/)


class OneByOne:
    """The naive baseline: the reader as it was (one message and one contact read per conversation)."""

    def __init__(self, api: Services) -> None:
        self.api = api

    def read(
        self, ruleset: RuleSet, conversations: Sequence[Conversation], now: datetime, **_: Any
    ) -> list[Snapshot]:
        out = []
        for c in conversations:
            messages = self.api.messages.latest(c.channel, c.id) if ruleset.needs_messages else None
            contact: Contact | None = None
            if ruleset.needs_contact and c.contact_id is not None:
                try:
                    contact = self.api.contacts.get(c.contact_id)
                except NotFound:
                    contact = None
            out.append(Snapshot(c, messages, contact))
        return out


# --- resync ---------------------------------------------------------------------------------------

# A full pass in one run: the poll's page and time budget (200 pages, 60 s) would cut a
# resync of more than 10,000 open conversations into several runs (it resumes where it stopped).
WHOLE_PASS = {"poll_max_pages": 100_000, "poll_max_tick_s": 3600.0}


@dataclass
class Breakdown:
    """A resync's requests by kind."""

    total: int = 0
    pages: int = 0
    routing: int = 0
    messages: int = 0
    contacts: int = 0

    def __str__(self) -> str:
        return f"{self.pages:,} + {self.routing:,} + {self.messages:,} + {self.contacts:,}"


@dataclass
class ResyncRow:
    n: int
    conversations: int
    cold: Breakdown
    warm: int
    after_own: int
    own_replies: int
    naive: int | None
    naive_extrapolated: bool
    cpu_ms_per_conv: float
    sim_ms_per_req: float

    @property
    def goal(self) -> int:
        """3·ceil(N/50) for the N open conversations the resync reads (the issue's goal)."""
        return 3 * ceil_div(self.conversations, PAGE)


def _resync(loop: Loop, transport: CountingTransport) -> tuple[Breakdown, float, int]:
    transport.reset()
    routing = [0]
    read = loop.router.read

    def counted(pools: Any) -> Any:
        view = read(pools)
        routing[0] += loop.router.load_requests
        return view

    loop.router.read = counted  # type: ignore[method-assign]
    cpu = time.thread_time()
    try:
        report_ = loop.resync_once()
    finally:
        loop.router.read = read  # type: ignore[method-assign]
    cpu = time.thread_time() - cpu
    messages = sum(
        c for (_, path), c in transport.requests.items() if path.startswith("/conversation-messages")
    )
    conversations = transport.calls("GET", "/conversations")
    split = Breakdown(
        transport.total, conversations - routing[0], routing[0], messages, transport.calls("GET", "/contacts")
    )
    return split, cpu, report_.conversations


def resync_row(n: int, naive: bool, *, array_limit: int | None = None) -> ResyncRow:
    """`array_limit`: the simulator refuses longer query arrays, as qs's default (20) does."""
    with served() as bench:
        bench.sim.seed(n)
        bench.sim.array_limit = array_limit
        transport = CountingTransport()
        runtime = bench.runtime("", transport=transport, **SHIPPED, **WHOLE_PASS)
        loop = Loop(runtime, Collector(), dry_run=True)
        bench.app.reset()
        cold, cpu, conversations = _resync(loop, transport)
        sim_ms = bench.app.ms_per_request
        warm, _, _ = _resync(loop, transport)
        own = _own_replies(bench, runtime, max(n // 100, 1))
        after_own, _, _ = _resync(loop, transport)
        naive_requests = None
        if naive:
            loop.snapshots = OneByOne(runtime.api)  # type: ignore[assignment]
            naive_requests = _resync(loop, transport)[0].total
        return ResyncRow(n, conversations, cold, warm.total, after_own.total, own, naive_requests, False,
                         1000 * cpu / max(conversations, 1), sim_ms)  # fmt: skip


def extrapolate_naive(rows: Sequence[ResyncRow]) -> list[ResyncRow]:
    """The naive reader is not run at 100k (hours at 20 req/s): its requests per open
    conversation at the largest measured N, times N."""
    measured = [r for r in rows if r.naive is not None]
    if not measured:
        return list(rows)
    base = max(measured, key=lambda r: r.n)
    per = (base.naive or 0) / max(base.conversations, 1)
    return [
        r if r.naive is not None else replace(r, naive=round(per * r.conversations), naive_extrapolated=True)
        for r in rows
    ]


def _own_replies(bench: Bench, runtime: Any, k: int) -> int:
    """Send our reply into k open conversations as the executor does, recording it as our own write."""
    from worker.state.own_writes import OwnWrites

    open_ = list(runtime.api.conversations.find({"status": "open", "channel": "sms"}))[:k]
    sent = [(c, runtime.api.sends.send_message(c, "our reply")) for c in open_]
    OwnWrites(runtime.redis).record(sent)
    return len(sent)


RESYNC_COLUMNS = [
    "seeded", "open N", "goal 3·ceil(N/50)", "cold req", "met",
    "pages + routing + message finds + contact finds", "warm req (nothing moved)",
    "req after 1% own replies", "naive req (one by one)",
    "est. wall at 20 req/s (cold)", "naive est. wall", "worker CPU ms/conv", "sim ms/req",
]  # fmt: skip


def resync_table(rows: Sequence[ResyncRow]) -> Table:
    out = Table(RESYNC_COLUMNS)
    for r in rows:
        naive = (
            "-" if r.naive is None else f"{r.naive:,}" + (" (extrapolated)" if r.naive_extrapolated else "")
        )
        naive_wall = "-" if r.naive is None else _duration(r.naive / DEFAULT_RATE)
        met = "yes" if r.cold.total <= r.goal else "NO"
        own = f"{r.after_own:,} ({r.own_replies:,} replied)"
        out.add(
            r.n, r.conversations, r.goal, r.cold.total, met, str(r.cold), r.warm, own, naive,
            _duration(r.cold.total / DEFAULT_RATE), naive_wall, r.cpu_ms_per_conv, r.sim_ms_per_req,
        )  # fmt: skip
    return out


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# --- a resync on the real clock at the default rate limit -------------------------------------


@dataclass
class RateRow:
    n: int
    conversations: int
    requests: int
    wall_s: float
    cpu_s: float
    load: str

    @property
    def goal_s(self) -> float:
        return RESYNC_INTERVAL_S


RESYNC_INTERVAL_S = 600.0  # the default resync interval (worker/config.py)


def rate_limited_resync(n: int) -> RateRow:
    """A cold full resync of n seeded conversations on the real clock, the client at its
    default 20 requests/s (burst 20): what one pass costs in time."""
    with served(SystemClock()) as bench:
        bench.sim.seed(n)
        transport = CountingTransport()
        runtime = bench.runtime("", transport=transport, **LIMITED, **SHIPPED, **WHOLE_PASS)
        loop = Loop(runtime, Collector(), dry_run=True)
        started, cpu = time.perf_counter(), time.thread_time()
        report_ = loop.resync_once()
        wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
        load = "/".join(f"{x:.1f}" for x in os.getloadavg())
        return RateRow(n, report_.conversations, transport.total, wall, cpu, load)


RATE_COLUMNS = [
    "seeded", "open N", "requests", "wall s (real clock, 20 req/s)", "requests / 20", "worker CPU s",
    "goal s (resync interval)", "met", "load avg 1/5/15 min",
]  # fmt: skip


def rate_table(rows: Sequence[RateRow]) -> Table:
    out = Table(RATE_COLUMNS)
    for r in rows:
        out.add(
            r.n, r.conversations, r.requests, r.wall_s, r.requests / DEFAULT_RATE, r.cpu_s, r.goal_s,
            "yes" if r.wall_s <= r.goal_s else "NO", r.load,
        )  # fmt: skip
    return out


# --- commands at the default rate limit ---------------------------------------------------------


@dataclass
class CommandRow:
    command: str
    requests: int
    seconds: float
    naive_requests: int | None


LIMITED = {"rate_limit_per_s": DEFAULT_RATE, "rate_burst": 20}  # the client's defaults


def commands(n: int, profile: bool = False, only: Sequence[str] | None = None) -> list[CommandRow]:
    """Each command on the real clock (the rate limiter really waits), as the CLI runs it."""
    with served(SystemClock()) as bench:
        bench.sim.seed(n)
        transport = CountingTransport()
        limited = bench.runtime("", transport=transport, **LIMITED, **SHIPPED, **WHOLE_PASS)
        api, ruleset, now = limited.api, limited.rulebook.ruleset, limited.clock.now()
        rows = []
        for name, run in _command_runs(limited, api, ruleset, now).items():
            if only is not None and name not in only:
                continue
            transport.reset()
            started = time.perf_counter()
            _profiled(run, name) if profile and name == "plan --full" else run()
            rows.append(CommandRow(name, transport.total, time.perf_counter() - started, None))
        return rows


def _profiled(run: Callable[[], object], name: str) -> None:
    """cProfile one command and print where its time goes (the 25 costliest by own time)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(run)
    print(f"profile of {name} (tottime):")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def _command_runs(
    runtime: Any, api: Services, ruleset: RuleSet, now: datetime
) -> dict[str, Callable[[], object]]:
    def plan_full() -> object:
        return Loop(runtime, Collector(), dry_run=True).resync_once()

    def backtest() -> object:
        since = now - timedelta(days=7)
        found = fetch_histories(api, since, contacts=ruleset.needs_contact)
        return replay(ruleset, read_ahead(found), since, now)

    def sla() -> object:
        open_ = list(api.conversations.find({"status": "open"}))
        return sla_clocks(api, ruleset, open_, now, runtime.settings)

    return {"plan --full": plan_full, "backtest --since 7d": backtest, "sla": sla}


COMMAND_COLUMNS = [
    "command (5,000 conversations)",
    "requests",
    "wall s at 20 req/s",
    "goal s",
    "met",
    "before (issue 14)",
]
BEFORE = {"plan --full": "419 s", "backtest --since 7d": "481 s", "sla": "202 s"}


def command_table(rows: Sequence[CommandRow]) -> Table:
    out = Table(COMMAND_COLUMNS)
    for r in rows:
        out.add(
            r.command,
            r.requests,
            r.seconds,
            30,
            "yes" if r.seconds <= 30 else "NO",
            BEFORE.get(r.command, "-"),
        )
    return out


# --- sends --------------------------------------------------------------------------------------


@dataclass
class SendRow:
    k: int
    steps: int
    posts: int
    reads: int
    seconds: float

    @property
    def per_reply(self) -> float:
        return (self.posts + self.reads) / self.k


def sends(k: int) -> SendRow:
    with served() as bench:
        transport = CountingTransport()
        collector = Collector()
        loop = Loop(bench.runtime(REPLY_RULES, transport=transport), collector)
        start_watermark_now(loop, lead(loop))
        for n in range(k):
            bench.clock.advance(0.001)  # type: ignore[attr-defined]
            bench.sim.new_conversation(channel="sms", text=f"hello {n}")
        bench.clock.advance(120)  # type: ignore[attr-defined]
        loop.poll_once()
        transport.reset()
        started = time.perf_counter()
        for step in collector.steps:
            execute(loop.runtime, step)
        seconds = time.perf_counter() - started
        posts = sum(c for (method, _), c in transport.requests.items() if method == "POST")
        return SendRow(k, len(collector.steps), posts, transport.total - posts, seconds)


SEND_COLUMNS = [
    "k replies",
    "steps",
    "POSTs",
    "reads",
    "calls per reply",
    "goal",
    "met",
    "before",
    "ms executing",
]


def send_table(rows: Sequence[SendRow]) -> Table:
    out = Table(SEND_COLUMNS)
    for r in rows:
        met = "yes" if r.per_reply <= 1.1 else "NO"
        out.add(r.k, r.steps, r.posts, r.reads, f"{r.per_reply:.3f}", "≤ 1.1", met, "3", 1000 * r.seconds)
    return out


# --- main ---------------------------------------------------------------------------------------


def _progress(row: T) -> T:
    """Each result as soon as it is measured (a full run takes long on a shared machine)."""
    print(row, flush=True)
    return row


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-n", type=int, default=10_000, help="largest N for the resync (100000 takes long)"
    )
    parser.add_argument(
        "--rate-n",
        type=int,
        default=None,
        help="N of the resync on the real clock at 20 req/s (default: --max-n)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile `plan --full` and print the top")
    parser.add_argument(
        "--commands",
        default="plan --full,backtest --since 7d,sla",
        help="which commands to time, comma-separated (default: all three)",
    )


def main(argv: Sequence[str] | None = None) -> tuple[list[ResyncRow], list[CommandRow], list[SendRow]]:
    args = arguments(__doc__ or "", argv, _options)
    sizes = [
        n for n in ((200, 1_000) if args.quick else (1_000, 10_000, 100_000)) if n <= max(args.max_n, 200)
    ]
    resync = extrapolate_naive([_progress(resync_row(n, naive=n <= 10_000)) for n in sizes])
    rate_n = args.rate_n or (200 if args.quick else max(sizes))
    rate_rows = [_progress(rate_limited_resync(rate_n))]
    only = [c.strip() for c in args.commands.split(",")]
    command_rows = [_progress(r) for r in commands(500 if args.quick else COMMAND_N, args.profile, only)]
    send_rows = [_progress(sends(k)) for k in ((60,) if args.quick else (120, 1_000))]
    notes = [
        "resync: the shipped rules (rules/), `Loop.resync_once` in dry-run (what `plan --full` runs), "
        "one whole pass (the poll's 200-page budget lifted); requests counted at the client; 'warm' "
        "is the next resync with nothing changed (the cache); 'after 1% own replies' sends our reply "
        "into 1% of the sms conversations and records it as the executor does "
        "(worker/state/own_writes.py): no read for those either. 'est. wall' is requests / 20.",
        "naive: the reader as it was before issue 14 (per conversation one `$limit=50` message read "
        "and one `GET /contacts/:id`), run on the same data right after; at 100k extrapolated from "
        "the largest N run (requests per open conversation x N).",
        "real clock: the same cold pass with the client's default rate limit really waiting "
        "(20 requests/s, burst 20); the simulator runs in the same process (it shares the GIL).",
        "commands: run in-process through the same functions as the CLI, on the real clock with the "
        "client's default rate limit (20 requests/s, burst 20).",
        "sends: one poll plans k replies (steps of up to 50 with the same action), each step executed "
        "as the actor would; every HTTP request counted.",
        "machine: 2 cores shared with other sessions; load average (1/5/15 min) at the end: "
        + "/".join(f"{x:.1f}" for x in os.getloadavg())
        + "; wall times are upper bounds.",
    ]
    report(
        "Read cost (benchmark 7, issue 14)",
        command_line("bench.read_cost", argv),
        [
            ("Full resync", resync_table(resync)),
            ("Full resync on the real clock at 20 requests/s", rate_table(rate_rows)),
            ("Commands at the default rate limit", command_table(command_rows)),
            ("Sends", send_table(send_rows)),
        ],
        notes,
        save=not args.no_save,
    )
    return resync, command_rows, send_rows


if __name__ == "__main__":
    main()
