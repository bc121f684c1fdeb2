"""Benchmark 6, growth: how the costs change as N grows 1k -> 10k -> 100k.

Per N, in one run: the incremental poll's requests per quiet tick, per tick with a
fixed 100 changes and with 1% of N changing, its wall time per tick, the naive
poller's requests per tick, the simulator's own cost per request, and
evaluation cost per conversation. Writes bench/growth.png when matplotlib is
installed (it is not a dependency).

    python -m bench.growth [--quick]
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import eval_throughput, latency, poll_cost, throughput
from bench.common import Table, arguments, command_line, ratio, report

FIXED_CHANGES = 100
PNG_PATH = Path(__file__).with_name("growth.png")


@dataclass
class Row:
    n: int
    quiet: int
    fixed_requests: float
    fixed_ms: float
    fixed_sim_ms: float
    onepct_changed: float
    onepct_requests: float
    naive_requests: float
    naive_ms: float
    eval_us: float
    # Benchmarks 3 and 5 on the real clock, measured up to REAL_CLOCK_MAX_N (None above it).
    assign_p95_s: float | None = None
    escalate_p95_s: float | None = None
    replies_per_s: float | None = None


REAL_CLOCK_MAX_N = 10_000
LATENCY_EVENTS, LATENCY_RATE_PER_S, LATENCY_SLA_S = 100, 10.0, 5
THROUGHPUT_K = 500


def real_clock(row: Row) -> Row:
    """Add p95 latencies (3) and replies per second (5) with `row.n` old conversations in the sandbox."""
    found = latency.measure(
        latency.Config(2.0), LATENCY_EVENTS, LATENCY_RATE_PER_S, LATENCY_SLA_S, seed_n=row.n
    )
    row.assign_p95_s = found.p("assign", 95)
    row.escalate_p95_s = found.p("escalate", 95)
    row.replies_per_s = throughput.end_to_end(throughput.Config(), THROUGHPUT_K, seed_n=row.n).per_s
    return row


def measure(n: int, ticks: int, eval_n: int) -> Row:
    fixed = poll_cost.measure(n, change_ticks=ticks, naive_ticks=1, changes_per_tick=FIXED_CHANGES)
    onepct = poll_cost.measure(n, change_ticks=ticks, naive_ticks=0)
    snaps = eval_throughput.snapshots(min(n, eval_n))
    speed = eval_throughput.throughput("all", eval_throughput.shipped_rules(), snaps)
    naive = fixed.naive[0]
    return Row(
        n=n,
        quiet=fixed.quiet.requests,
        fixed_requests=statistics.mean(t.requests for t in fixed.ours),
        fixed_ms=1000 * statistics.mean(t.seconds for t in fixed.ours),
        fixed_sim_ms=statistics.mean(t.sim_ms for t in fixed.ours),
        onepct_changed=statistics.mean(t.changed for t in onepct.ours),
        onepct_requests=statistics.mean(t.requests for t in onepct.ours),
        naive_requests=naive.requests,
        naive_ms=1000 * naive.seconds,
        eval_us=1e6 * speed.seconds / speed.conversations,
    )


COLUMNS = [
    "N", "quiet req/tick", f"req/tick, {FIXED_CHANGES} changed", "ms/tick", "sim ms/req",
    "1% changed", "req/tick, 1%", "naive req/tick", "naive ms/tick", f"ratio at {FIXED_CHANGES} changed",
    "eval µs/conv (all rules)", "new→assigned p95 s", "deadline→escalation p95 s", "replies/s",
]  # fmt: skip


def table(rows: Sequence[Row]) -> Table:
    out = Table(COLUMNS)
    for r in rows:
        out.add(
            r.n, r.quiet, r.fixed_requests, r.fixed_ms, r.fixed_sim_ms, r.onepct_changed, r.onepct_requests,
            r.naive_requests, r.naive_ms, ratio(r.naive_requests, r.fixed_requests), r.eval_us,
            _or_dash(r.assign_p95_s), _or_dash(r.escalate_p95_s), _or_dash(r.replies_per_s),
        )  # fmt: skip
    return out


def _or_dash(value: float | None) -> float | str:
    return "-" if value is None else value


def plot(rows: Sequence[Row], path: Path = PNG_PATH) -> bool:
    """A log-log plot of requests per tick against N; False when matplotlib is missing."""
    try:
        import matplotlib  # type: ignore[import-not-found]  # optional, not a dependency

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found]
    except ImportError:
        return False
    sizes = [r.n for r in rows]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.loglog(sizes, [r.naive_requests for r in rows], "o-", label="naive poller")
    axes.loglog(sizes, [r.onepct_requests for r in rows], "s-", label="inboxpilot, 1% changed")
    axes.loglog(sizes, [r.fixed_requests for r in rows], "^-", label=f"inboxpilot, {FIXED_CHANGES} changed")
    axes.loglog(sizes, [max(r.quiet, 1) for r in rows], "v-", label="inboxpilot, quiet")
    axes.set_xlabel("conversations N")
    axes.set_ylabel("API requests per tick")
    axes.legend()
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def main(argv: Sequence[str] | None = None) -> list[Row]:
    args = arguments(__doc__ or "", argv)
    sizes = (1_000, 2_000) if args.quick else (1_000, 10_000, 100_000)
    rows = [measure(n, ticks=1 if args.quick else 3, eval_n=2_000 if args.quick else 20_000) for n in sizes]
    if not args.quick:  # real-clock runs take a minute per size: full runs only (each has its own quick test)
        rows = [real_clock(r) if r.n <= REAL_CLOCK_MAX_N else r for r in rows]
    notes = [
        "requests per tick with a fixed number of changes stay flat in N (the index keeps the simulator "
        "O(log N + page)); the naive poller grows linearly.",
        "eval µs/conv over min(N, 20k) seeded snapshots: per-conversation cost does not depend on N.",
        f"latency (3): {LATENCY_EVENTS} arrivals at {LATENCY_RATE_PER_S:g}/s, poll 2 s, "
        f"SLA {LATENCY_SLA_S} s, "
        f"8 worker threads; throughput (5): K = {THROUGHPUT_K} replies, 8 threads; both with N old "
        f"conversations in the sandbox, for N ≤ {REAL_CLOCK_MAX_N:,} ('-' above).",
    ]
    if not args.no_save and plot(rows):
        notes.append(f"plot: bench/{PNG_PATH.name}")
    report(
        "Growth with N (benchmark 6)",
        command_line("bench.growth", argv),
        [("", table(rows))],
        notes,
        save=not args.no_save,
    )
    return rows


if __name__ == "__main__":
    main()
