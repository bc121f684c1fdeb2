"""Benchmark 7b, backtest cost (issue 14): `backtest --since 7d` at the default client rate limit.

For N seeded conversations (shipped rules, the seeded sandbox of bench.read_cost), the
backtest as the CLI runs it (`fetch_histories` through `read_ahead` into `replay`) with
the client's default 20 requests/s, burst 20: requests per service, wall time (goal
≤ 30 s at N = 5,000), the replay's CPU, the simulator's own time per request, the
machine's load, and a digest of `Report.to_dict()` (equal digests: the same report).
Then the CLI itself, end to end, against `inboxpilot sandbox` in another process.

    python -m bench.backtest_cost [--quick] [--sizes 1000,5000,10000] [--cli-runs 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bench.common import (
    TOKEN,
    CountingTransport,
    Table,
    arguments,
    clean_env,
    command_line,
    report,
    sandbox_process,
    served,
)
from bench.read_cost import DEFAULT_RATE, SHIPPED
from worker.api.client import ApiClient
from worker.api.services import Services
from worker.backtest import History, IdleCheck, fetch_histories, read_ahead, replay
from worker.clock import SystemClock
from worker.rules.context import utc

GOAL_S = 30.0
GOAL_N = 5_000
WINDOW = timedelta(days=7)
CLI_TIMEOUT_S = 600
# Before conversations unchanged since `since` were looked at (commit 6a71615): firings and
# requests on the same seeded data and shipped rules (only the changed ones were replayed).
BEFORE = {
    1_000: (2_310, 88),
    5_000: (11_462, 428),
    10_000: (22_903, 847),
}


@dataclass
class Row:
    n: int
    replayed: tuple[int, int, int]  # changed in the window, unchanged read whole, unchanged ruled out
    firings: int
    requests: dict[str, int]
    wall_s: float
    cpu_s: float
    sim_ms: float
    load: tuple[float, float]
    digest: str

    @property
    def total(self) -> int:
        return sum(self.requests.values())


def measure(n: int) -> Row:
    with served() as bench:
        bench.sim.seed(n)
        transport = CountingTransport()
        limits = {"rate_limit_per_s": DEFAULT_RATE, "rate_burst": 20}
        runtime = bench.runtime("", **limits, **SHIPPED)
        ruleset, now = runtime.rulebook.ruleset, runtime.clock.now()
        # The rate limiter waits on the client's clock: the system clock, as in the CLI (the
        # benchmark's fake clock would let every wait pass at once).
        client = ApiClient.from_settings(runtime.settings, clock=SystemClock(), transport=transport)
        api, since = Services(client), now - WINDOW
        bench.app.reset()
        seen: Counter[str] = Counter()
        load_before = os.getloadavg()[0]
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            idle = IdleCheck(ruleset, since, now)
            found_histories = fetch_histories(api, since, contacts=ruleset.needs_contact, idle=idle)
            histories = read_ahead(_counted(found_histories, since, seen))
            found = replay(ruleset, histories, since, now)
        finally:
            client.close()
        wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
        data = json.dumps(found.to_dict(), sort_keys=True).encode()
        replayed = (seen["changed"], seen["unchanged"], seen["ruled out"])
        return Row(
            n, replayed, len(found.firings), _by_kind(transport), wall, cpu,
            bench.app.ms_per_request, (load_before, os.getloadavg()[0]),
            hashlib.sha256(data).hexdigest()[:12],
        )  # fmt: skip


def _counted(histories: Iterable[History], since: datetime, seen: Counter[str]) -> Iterator[History]:
    """`histories`, counted by kind as they are read (in the reading thread)."""
    for h in histories:
        updated = utc(h.conversation.updated_at)
        unchanged = updated is not None and updated < since
        seen["ruled out" if h.idle else "unchanged" if unchanged else "changed"] += 1
        yield h


def _by_kind(transport: CountingTransport) -> dict[str, int]:
    out = {"conversations": 0, "messages": 0, "contacts": 0, "other": 0}
    for (_method, path), count in transport.requests.items():
        kind = path.strip("/").split("-")[0] if path.startswith("/conversation-messages") else path.strip("/")
        kind = {"conversation": "messages"}.get(kind, kind)
        out[kind if kind in out else "other"] += count
    return out


@dataclass
class CliRow:
    n: int
    wall_s: float
    conversations: int
    firings: int
    load: tuple[float, float]


def end_to_end(n: int) -> CliRow:
    """`inboxpilot backtest rules/ --since 7d --json` as a user runs it: its own process, against
    `inboxpilot sandbox` seeded with n conversations in another, on the system clock."""
    with sandbox_process(seed=n) as sandbox:
        env = clean_env(api_url=sandbox.url, api_token=TOKEN, log_level="WARNING")
        command = [
            sys.executable,
            "-m",
            "worker",
            "backtest",
            str(SHIPPED["rules_path"]),
            "--since",
            "7d",
            "--json",
        ]
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, check=True, timeout=CLI_TIMEOUT_S)
        wall = time.perf_counter() - started
        data = json.loads(done.stdout)
        return CliRow(n, wall, data["conversations"], len(data["firings"]), (load_before, os.getloadavg()[0]))


CLI_COLUMNS = [
    "seeded N",
    "conversations in the report",
    "firings",
    "wall s (process start to exit)",
    "goal s",
    "met",
    "load 1 min",
]


def cli_table(rows: Sequence[CliRow]) -> Table:
    out = Table(CLI_COLUMNS)
    for r in rows:
        met = "yes" if r.wall_s <= GOAL_S else "NO"
        out.add(r.n, r.conversations, r.firings, r.wall_s, GOAL_S, met, f"{r.load[0]:.1f}, {r.load[1]:.1f}")
    return out


COLUMNS = [
    "seeded N", "changed in 7 d / unchanged read whole / unchanged ruled out", "firings", "firings before",
    "requests", "conv / msg / contact finds", "requests before", "requests / 20 per s", "wall s", "goal s",
    "met", "replay CPU s", "sim ms/req", "load 1 min (start, end)", "report sha256",
]  # fmt: skip


def table(rows: Sequence[Row]) -> Table:
    out = Table(COLUMNS)
    for r in rows:
        kinds = f"{r.requests['conversations']} / {r.requests['messages']} / {r.requests['contacts']}"
        met = "-" if r.n != GOAL_N else ("yes" if r.wall_s <= GOAL_S else "NO")
        firings, requests = BEFORE.get(r.n, ("-", "-"))
        out.add(
            r.n, " / ".join(map(str, r.replayed)), r.firings, firings, r.total, kinds, requests,
            r.total / DEFAULT_RATE, r.wall_s, GOAL_S, met, r.cpu_s, r.sim_ms,
            f"{r.load[0]:.1f}, {r.load[1]:.1f}", r.digest,
        )  # fmt: skip
    return out


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="1000,5000,10000", help="comma-separated N to seed")
    parser.add_argument("--cli-runs", type=int, default=2, help="end-to-end CLI runs at N = 5,000 (0: none)")


def main(argv: Sequence[str] | None = None) -> list[Row]:
    args = arguments(__doc__ or "", argv, _options)
    sizes = [200] if args.quick else [int(n) for n in args.sizes.split(",")]
    rows = []
    for n in sizes:
        rows.append(measure(n))
        print(rows[-1], flush=True)  # each as measured: a full run takes minutes on a shared machine
    cli_rows = []
    for _ in range(0 if args.quick else args.cli_runs):
        cli_rows.append(end_to_end(GOAL_N))
        print(cli_rows[-1], flush=True)
    notes = [
        "the backtest as `inboxpilot backtest rules/ --since 7d` runs it, in-process against the seeded "
        "simulator (served on loopback in this process), with the client's default rate limit "
        "(20 requests/s, burst 20) waiting on the system clock; requests counted at the client.",
        "reads: the changed conversations (`updated_at[$gte]`, pages of 50), then per batch of 50 "
        "conversations of one channel one paged `conversation_id[$in]` message find and one "
        "`id[$in]` contact find; each batch is replayed as it arrives. The conversations unchanged "
        "since `since` are listed first (`updated_at[$lt]`, pages of 50 by `id[$gt]`): those "
        "`IdleCheck` rules out on their record alone cost nothing more; the others are read whole "
        "the same way, after the changed ones, and replayed.",
        "before: commit 6a71615, which replayed only the conversations changed in the window (same "
        "seeded data, same rules): its firings and requests.",
        "replay CPU: the benchmark's main thread (the replay; the reading runs in `read_ahead`'s "
        "thread, as in the CLI); the simulator runs in a third thread of the same process (sim ms/req).",
        "end to end: `inboxpilot backtest rules/ --since 7d --json` in its own process against "
        "`inboxpilot sandbox --seed 5000` in another (seeded relative to the system clock, so its "
        "data differs from the in-process rows'); wall from process start (imports included) to exit.",
        "machine shared with other sessions (2 cores): wall times are upper bounds; load shown per row.",
    ]
    report(
        "Backtest cost (benchmark 7b, issue 14)",
        command_line("bench.backtest_cost", argv),
        [
            ("In-process, the CLI's functions", table(rows)),
            ("End to end: the CLI and the sandbox", cli_table(cli_rows)),
        ],
        notes,
        save=not args.no_save,
    )
    return rows


if __name__ == "__main__":
    main()
