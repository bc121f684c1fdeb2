"""Benchmark 2, action cost: API calls to apply one bulk action to k matching conversations,
inboxpilot (planner -> bulk steps -> worker.execution.execute) vs the naive one call per conversation.

    python -m bench.action_cost [--quick]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

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
    redis_round_trips,
    report,
    served,
    start_watermark_now,
)
from bench.naive import NaivePoller
from worker.clock import FakeClock
from worker.execution.execute import execute
from worker.scheduling.tick import Loop

OWNER = 101
ASSIGN_RULES = f"""
rules:
  - id: assign-new
    once: per_conversation
    when: {{status: open, owner: unset}}
    then:
      - assign: {OWNER}
"""
BULK_PATH = "/conversations-bulk-actions"


@dataclass
class ActionResult:
    k: int
    steps: int
    bulk_calls: int
    read_backs: int
    ours_seconds: float
    redis_trips_per_step: float
    naive_calls: int
    naive_seconds: float
    assigned_ours: int
    assigned_naive: int


def _arrive(bench: Bench, k: int) -> None:
    assert isinstance(bench.clock, FakeClock)
    for _ in range(k):
        bench.clock.advance(0.001)
        bench.sim.new_conversation(channel="sms")
    bench.clock.advance(1)


def _assigned(bench: Bench) -> int:
    with bench.sim.lock:
        return sum(1 for r in bench.sim.store.conversations.records.values() if r["owner_id"] == OWNER)


def ours(k: int) -> tuple[int, int, int, float, float, int]:
    """(steps, bulk calls, read-back calls, seconds executing, Redis round trips per step, assigned)."""
    with served() as bench:
        transport = CountingTransport()
        collector = Collector()
        loop = Loop(bench.runtime(ASSIGN_RULES, transport=transport), collector)
        start_watermark_now(loop, lead(loop))
        _arrive(bench, k)
        loop.poll_once()
        transport.reset()
        started = time.perf_counter()
        with redis_round_trips() as trips:
            for step in collector.steps:
                execute(loop.runtime, step)
        seconds = time.perf_counter() - started
        bulk = transport.calls("POST", BULK_PATH)
        per_step = len(trips) / max(len(collector.steps), 1)
        return len(collector.steps), bulk, transport.total - bulk, seconds, per_step, _assigned(bench)


def naive(k: int) -> tuple[int, float, int]:
    """(action calls, seconds acting, conversations assigned) for the naive script."""
    with served() as bench:
        _arrive(bench, k)
        poller = NaivePoller(bench.client(), bench.sim.organization_id)
        matching = [r["id"] for r in poller.tick() if r["status"] == "open" and r["owner_id"] is None]
        started = time.perf_counter()
        calls = poller.act(matching, {"owner_id": OWNER})
        return calls, time.perf_counter() - started, _assigned(bench)


def measure(k: int) -> ActionResult:
    steps, bulk, reads, seconds, trips, assigned = ours(k)
    naive_calls, naive_seconds, naive_assigned = naive(k)
    return ActionResult(
        k, steps, bulk, reads, seconds, trips, naive_calls, naive_seconds, assigned, naive_assigned
    )


COLUMNS = [
    "k", "bulk steps", "ours bulk calls", "goal ceil(k/50)", "ours read-back calls", "naive calls (= k)",
    "call ratio", "ours ms", "naive ms", "wall ratio", "Redis round trips per step", "assigned ours/naive",
]  # fmt: skip


def table(results: Sequence[ActionResult]) -> Table:
    out = Table(COLUMNS)
    for r in results:
        out.add(
            r.k, r.steps, r.bulk_calls, ceil_div(r.k, PAGE), r.read_backs, r.naive_calls,
            ratio(r.naive_calls, r.bulk_calls), 1000 * r.ours_seconds, 1000 * r.naive_seconds,
            ratio(r.naive_seconds, r.ours_seconds), r.redis_trips_per_step,
            f"{r.assigned_ours}/{r.assigned_naive}",
        )  # fmt: skip
    return out


SIZES_FULL = (10, 120, 5_000)
SIZES_QUICK = (10, 120)


def main(argv: Sequence[str] | None = None) -> list[ActionResult]:
    args = arguments(__doc__ or "", argv)
    results = [measure(k) for k in (SIZES_QUICK if args.quick else SIZES_FULL)]
    notes = [
        "ours: the loop polls, plans `assign` for every match (one bulk change, chunked by 50), "
        "claims in the ledger, then `worker.execution.execute.execute` runs each step (as the actor would).",
        "read-back calls: execution re-reads the step's conversations (one `id[$in]` find per 50) "
        "before acting, so a stale or already-applied item is never re-sent; they are reads, not actions.",
        "naive: one PATCH /conversations/:id per matching conversation.",
    ]
    report(
        "Action cost (benchmark 2)",
        command_line("bench.action_cost", argv),
        [("", table(results))],
        notes,
        save=not args.no_save,
    )
    return results


if __name__ == "__main__":
    main()
