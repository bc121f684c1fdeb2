"""Benchmark 1, poll cost: API requests and bytes per tick, inboxpilot's incremental poll
vs the naive poller, N conversations with 1% of them changing per tick.

    python -m bench.poll_cost [--quick]

The simulator runs on a fake clock so each tick's changes are spread over the poll
interval (as real traffic is) and the figures are the same on every run.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.common import (
    PAGE,
    Bench,
    Collector,
    CountingTransport,
    Table,
    arguments,
    ceil_div,
    command_line,
    lead,
    ratio,
    report,
    served,
    start_watermark_now,
)
from bench.naive import NaivePoller
from worker.clock import FakeClock
from worker.scheduling.tick import Loop

# Record-only rules: nothing beyond the conversation record is read, so the poll is all there is.
RECORD_ONLY_RULES = """
rules:
  - id: assign-new
    once: per_conversation
    when: {status: open, owner: unset}
    then:
      - assign: 101
  - id: escalate-waiting
    once: per_inbound_message
    when: {status: open, waiting_for_reply: {longer_than: 15m}}
    then:
      - move: {pipeline: 1, stage: 14}
"""
INTERVAL_S = 2.0
CHANGE_FRACTION = 0.01


@dataclass
class Tick:
    changed: int
    requests: int
    bytes_in: int
    seconds: float
    seen: int
    sim_ms: float


@dataclass
class SizeResult:
    n: int
    quiet: Tick
    ours: list[Tick] = field(default_factory=list)
    naive: list[Tick] = field(default_factory=list)
    naive_quiet: Tick | None = None


def _change(bench: Bench, rng: random.Random, n: int, count: int) -> int:
    """`count` customer messages on random conversations, spread over the interval; distinct ids."""
    assert isinstance(bench.clock, FakeClock)
    ids = set()
    for _ in range(count):
        bench.clock.advance(INTERVAL_S / max(count, 1))
        conversation_id = rng.randint(1, n)
        bench.sim.customer_message(conversation_id, "any news?")
        ids.add(conversation_id)
    return len(ids)


def _ours(bench: Bench, loop: Loop, transport: CountingTransport, changed: int) -> Tick:
    transport.reset()
    bench.app.reset()
    started = time.perf_counter()
    report_ = loop.poll_once()
    seconds = time.perf_counter() - started
    return Tick(
        changed, transport.total, transport.bytes_in, seconds, report_.conversations, bench.app.ms_per_request
    )


def _naive(bench: Bench, naive: NaivePoller, transport: CountingTransport, changed: int) -> Tick:
    transport.reset()
    bench.app.reset()
    started = time.perf_counter()
    records = naive.tick()
    seconds = time.perf_counter() - started
    return Tick(changed, transport.total, transport.bytes_in, seconds, len(records), bench.app.ms_per_request)


def measure(
    n: int, change_ticks: int, naive_ticks: int, seed: int = 1, changes_per_tick: int | None = None
) -> SizeResult:
    with served() as bench:
        bench.sim.seed(n, seed=seed)
        transport = CountingTransport()
        loop = Loop(bench.runtime(RECORD_ONLY_RULES, transport=transport), Collector())
        ruleset = loop.runtime.rulebook.ruleset
        assert not ruleset.needs_messages and not ruleset.needs_contact, "rules must be record-only"
        start_watermark_now(loop, lead(loop))
        naive_transport = CountingTransport()
        naive = NaivePoller(bench.client(naive_transport), bench.sim.organization_id)
        rng = random.Random(seed)
        assert isinstance(bench.clock, FakeClock)
        bench.clock.advance(INTERVAL_S)
        result = SizeResult(n, _ours(bench, loop, transport, 0))
        if naive_ticks:
            result.naive_quiet = _naive(bench, naive, naive_transport, 0)
        for tick in range(change_ticks):
            count = changes_per_tick if changes_per_tick is not None else max(1, round(n * CHANGE_FRACTION))
            changed = _change(bench, rng, n, count)
            result.ours.append(_ours(bench, loop, transport, changed))
            if tick < naive_ticks:
                result.naive.append(_naive(bench, naive, naive_transport, changed))
        return result


def goal_changed(changed: int) -> int:
    return ceil_div(changed, PAGE) + 1


BUSY_COLUMNS = [
    "N", "changed/tick", "ours req/tick", "goal ceil(c/50)+1", "naive req/tick", "naive goal",
    "req ratio", "ours KB/tick", "naive KB/tick", "bytes ratio", "ours ms/tick", "naive ms/tick",
    "sim ms/req (ours)", "sim ms/req (naive)",
]  # fmt: skip


def tables(results: Sequence[SizeResult]) -> list[tuple[str, Table]]:
    quiet = Table(
        [
            "N",
            "ours req/tick",
            "goal",
            "naive req/tick",
            "naive goal ceil(N/50)",
            "ratio",
            "ours bytes",
            "naive bytes",
        ]
    )
    busy = Table(BUSY_COLUMNS)
    for r in results:
        naive_q = r.naive_quiet
        quiet.add(
            r.n, r.quiet.requests, 1, naive_q.requests if naive_q else "-", ceil_div(r.n, PAGE),
            ratio(naive_q.requests, r.quiet.requests) if naive_q else "-",
            r.quiet.bytes_in, naive_q.bytes_in if naive_q else "-",
        )  # fmt: skip
        changed = statistics.mean(t.changed for t in r.ours)
        req = statistics.mean(t.requests for t in r.ours)
        kb = statistics.mean(t.bytes_in for t in r.ours) / 1024
        naive_req = statistics.mean(t.requests for t in r.naive) if r.naive else 0.0
        naive_kb = statistics.mean(t.bytes_in for t in r.naive) / 1024 if r.naive else 0.0
        busy.add(
            r.n, changed, req, f"≤ {goal_changed(max(t.changed for t in r.ours))}",
            naive_req or "-", ceil_div(r.n, PAGE), ratio(naive_req, req) if r.naive else "-",
            kb, naive_kb or "-", ratio(naive_kb, kb) if r.naive else "-",
            1000 * statistics.mean(t.seconds for t in r.ours),
            1000 * statistics.mean(t.seconds for t in r.naive) if r.naive else "-",
            statistics.mean(t.sim_ms for t in r.ours),
            statistics.mean(t.sim_ms for t in r.naive) if r.naive else "-",
        )  # fmt: skip
    return [("Quiet tick (nothing changed)", quiet), ("1% of N changed per tick (mean over ticks)", busy)]


SIZES_FULL = (1_000, 10_000, 100_000)
SIZES_QUICK = (1_000,)


def run(sizes: Sequence[int], change_ticks: int, naive_ticks: int) -> list[SizeResult]:
    return [measure(n, change_ticks, naive_ticks) for n in sizes]


def main(argv: Sequence[str] | None = None) -> list[SizeResult]:
    args = arguments(__doc__ or "", argv)
    sizes = SIZES_QUICK if args.quick else SIZES_FULL
    results = run(sizes, change_ticks=2 if args.quick else 5, naive_ticks=1 if args.quick else 2)
    notes = [
        "ours = `Loop.poll_once()` with record-only rules and a collecting dispatcher; "
        "naive = bench/naive.py paging every conversation ($limit 50).",
        "changes = customer messages on random conversations (seeded RNG), spread over the 2 s interval "
        "on the simulator's fake clock; changed/tick counts distinct conversations.",
        "bytes = response bodies the client received; sim ms/req = time inside the simulator's ASGI app.",
        "a rule set that needs messages or contacts adds one read per changed conversation and rule need.",
    ]
    report(
        "Poll cost (benchmark 1)",
        command_line("bench.poll_cost", argv),
        tables(results),
        notes,
        save=not args.no_save,
    )
    return results


if __name__ == "__main__":
    main()
