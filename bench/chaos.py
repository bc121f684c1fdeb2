"""The long chaos run: >= 1,000 expected firings under every fault, Redis data loss included.

    python -m bench.chaos                 # the long run, appended to bench/RESULTS.md
    python -m bench.chaos --seed 7 --no-save
    python -m bench.chaos --quick         # the CI-sized run (tests/chaos/test_chaos.py)

It is the CI chaos test's harness (`tests/chaos/harness.py`) with bigger numbers,
imported rather than copied so the two can never drift: real processes (its own
`redis-server`, the simulator, 2 schedulers, 3 workers), seeded SIGKILLs of
workers and of the leader, 500s, commit-then-fail, 429 bursts, answers slower
than the client timeout, two Redis restarts that keep their data and one that
loses it (the API forgetting its idempotency keys at the same moment). The
verdict compares the simulator's audit log with the expected firings.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.common import RESULTS_PATH, Table, command_line, machine
from tests.chaos.harness import ChaosConfig, ChaosReport, run_chaos


def long_config(workdir: Path, seed: int, conversations: int, followups: int) -> ChaosConfig:
    return ChaosConfig(
        workdir=workdir,
        seed=seed,
        conversations=conversations,
        followups=followups,
        create_over_s=150.0,
        inject_over_s=170.0,
        worker_kills=10,
        leader_kills=3,
        rate_limit_bursts=3,
        slow_bursts=3,
        redis_restarts=2,
        redis_data_losses=1,
        converge_timeout_s=300.0,
        racing=40,
    )


def tables(report_: ChaosReport, config: ChaosConfig, seconds: float) -> list[tuple[str, Table]]:
    verdict = Table(["expected firings", "applied", "duplicates", "lost", "unexpected", "run (s)"])
    r = report_
    verdict.add(r.expected, r.applied, r.duplicates, r.lost, r.unexpected, seconds)
    faults = Table(["fault", "count"])
    for kind, count in sorted(report_.faults.items()):
        faults.add(kind, count)
    ledger = Table(["ledger failed (reason)", "count"])
    for reason, count in sorted(report_.ledger_failed.items()):
        ledger.add(reason, count)
    ledger.add("read-backs that found the effect already applied", report_.read_back_found)
    fresh = Table(["staleness re-check -> call", "ms"])
    for label, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        fresh.add(label, report_.staleness(q))
    fresh.add("actions measured", len(report_.staleness_ms))
    fresh.add("answers sent when the rule no longer held at re-check", report_.stale_sends)
    fresh.add(
        "answers whose customer wrote between re-check and call (no CAS in the API)", report_.raced_sends
    )
    ledger.add("dead letters left", report_.dead_letters)
    ledger.add("token in log lines", len(report_.token_leaks))
    return [("Verdict", verdict), ("Faults injected", faults), ("Ledger", ledger), ("Freshness", fresh)]


def notes(config: ChaosConfig, report_: ChaosReport) -> list[str]:
    out = [
        f"seed {config.seed}: {config.conversations} conversations (assign + note + reply each), "
        f"{config.followups} second customer messages (one more reply each); "
        f"{config.schedulers} schedulers, {config.workers} workers x {config.worker_threads} threads",
        f"client timeout {config.http_timeout_s} s, lease TTL {config.lease_ttl_s} s, "
        f"re-drive after {config.redrive_after_s} s, poll every 0.5 s",
    ]
    if report_.converged_s is not None:
        out.append(f"every expected firing applied and the queues idle after {report_.converged_s:.0f} s")
    out += report_.details[:20]
    return out


def section(title: str, command: str, parts: Sequence[tuple[str, Table]], lines: Sequence[str]) -> str:
    """A dated RESULTS.md section (as `bench.common.report`, with this run's own Redis named)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"## {title} — {stamp}", "", f"- machine: {machine()}", f"- command: `{command}`"]
    out += ["- redis: its own `redis-server` on a free port (append-only file), crashed on purpose", ""]
    for heading, table in parts:
        out += [f"**{heading}**", "", table.markdown(), ""]
    out += [f"- {line}" for line in lines]
    return "\n".join(out).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conversations", type=int, default=400)
    parser.add_argument("--followups", type=int, default=250)
    parser.add_argument("--quick", action="store_true", help="the CI-sized run")
    parser.add_argument("--no-save", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="inboxpilot-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.quick:
        config = ChaosConfig(workdir=workdir, seed=args.seed)
    else:
        config = long_config(workdir, args.seed, args.conversations, args.followups)
    started = time.monotonic()
    result = run_chaos(config)
    seconds = time.monotonic() - started
    print(result.summary(), file=sys.stderr)
    print(f"logs: {workdir / 'logs'}", file=sys.stderr)
    title = "Chaos (exactly-once under faults)" + (" — quick" if args.quick else "")
    text = section(
        title, command_line("bench.chaos", argv), tables(result, config, seconds), notes(config, result)
    )
    print(text)
    if not args.no_save:
        with RESULTS_PATH.open("a", encoding="utf-8") as out:  # append only: others write here too
            out.write("\n" + text)
    ok = result.duplicates == 0 and result.lost == 0 and result.unexpected == 0 and not result.token_leaks
    ok = ok and result.stale_sends == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
