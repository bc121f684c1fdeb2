"""A week of traffic through the real loop, then every property checked.

    python -m tests.scenarios.week --days 7 --rate 40 --seed 1

The pytest suite (tests/scenarios/test_week.py) runs the same thing with
`--days/--rate/--seed` pytest options.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.scenarios.driver import Driver, Lag, RunResult, build_runtime
from tests.scenarios.hours import Hours, load_hours
from tests.scenarios.order_checks import check_order
from tests.scenarios.properties import (
    Verdict,
    actual_firings,
    check_firings,
    check_night,
    check_quiet_and_window,
    expected_firings,
    specs,
)
from tests.scenarios.routing_checks import check_routing, load_roster
from tests.scenarios.timeline import build_history
from tests.scenarios.traffic import TrafficConfig, describe, generate
from worker.clock import FakeClock
from worker.simulator.testing import SimulatorHandle, served_simulator

RULES = Path(__file__).resolve().parents[2] / "rules" / "examples"
ROSTER = RULES / "scenario-roster.yaml"
# Monday 00:00 in Berlin; the Wednesday is scn-support's day off.
START = datetime(2026, 11, 2, tzinfo=ZoneInfo("Europe/Berlin"))
# Tuesday 10:00-10:20 in shift: the workers are stopped while the scheduler keeps claiming,
# then restarted; every check allows effects due meanwhile to land right after the restart.
LAG = Lag(START + timedelta(days=1, hours=10), START + timedelta(days=1, hours=10, minutes=20))


def rule_files() -> list[Path]:
    return sorted(RULES.glob("scenario-*.yaml"))


@dataclass
class Outcome:
    config: TrafficConfig
    run: RunResult
    verdicts: dict[str, Verdict]
    traffic: dict[str, int]

    @property
    def violations(self) -> list[str]:
        return [f"{job}: {line}" for job, v in self.verdicts.items() for line in v.violations]


def run_week(
    handle: SimulatorHandle, redis_url: str, config: TrafficConfig, lag: Lag | None = LAG
) -> Outcome:
    hours = load_hours(ROSTER)
    events = generate(config, hours["scn-support"])
    runtime = build_runtime(handle, redis_url, rule_files())
    try:
        run = Driver(handle, runtime, lag).run(events, config.start, config.end)
    finally:
        runtime.close()
    return Outcome(config, run, judge(handle, run, hours), describe(events))


def judge(handle: SimulatorHandle, run: RunResult, hours: dict[str, Hours]) -> dict[str, Verdict]:
    history = build_history(run.played, handle.sim.audit_log())
    rules = specs(hours)
    expected, actual = expected_firings(history, rules, run.end, run.lag), actual_firings(history, rules)
    verdicts = check_firings(expected, actual, rules, run.lag)
    check_night(history, hours, verdicts["sla"])
    check_quiet_and_window(history, rules, hours, verdicts["followup"])
    verdicts["routing"] = check_routing(history, load_roster(ROSTER), hours, run.lag)
    verdicts["order"] = check_order(handle.sim.audit_log())
    return verdicts


def _latency(values: list[float]) -> str:
    if not values:
        return "latency n/a"
    p95 = sorted(values)[max(0, int(len(values) * 0.95) - 1)]
    return f"latency mean {statistics.mean(values):.2f}s p95 {p95:.2f}s max {max(values):.2f}s"


def summary(outcome: Outcome) -> str:
    c, r = outcome.config, outcome.run
    refused = sum(1 for p in r.played if not p.accepted)
    lines = [
        f"scenario: {c.days:g} days from {c.start:%a %Y-%m-%d}, rate {c.rate_per_day:g}/day, seed {c.seed}",
        f"  traffic: {', '.join(f'{k} {v}' for k, v in sorted(outcome.traffic.items()))};"
        f" refused by API {refused}",
        f"  loop: {r.ticks} ticks, {r.polls_with_changes} polls with changes, {r.resyncs} resyncs, "
        f"{r.steps} steps, {len(r.execution_errors)} execution errors, {r.wall_s:.1f}s wall",
        f"  lagging workers: {r.lag.start:%a %H:%M}-{r.lag.end:%H:%M}, {r.lagged_steps} steps queued"
        if r.lag
        else "  lagging workers: none",
    ]
    for job, v in outcome.verdicts.items():
        counts = ", ".join(f"{k} {n}" for k, n in v.counts.items())
        head = (
            f"  {job}: {v.expected} expected, {v.fired} fired"
            if job != "routing"
            else f"  {job}: {v.expected} assignments"
        )
        extra = f", {v.silent} skipped (window), {v.ambiguous} racing a person" if job != "routing" else ""
        lines.append(f"{head}{extra}; {_latency(v.latencies_s)}; violations = {len(v.violations)}")
        lines.append(f"    {counts}")
        lines.extend(f"    ! {line}" for line in v.violations[:8])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--rate", type=float, default=40.0, help="mean arrivals per day")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis-url", default="", help="real Redis (default: embedded)")
    args = parser.parse_args()
    from worker.logs import configure_logging

    configure_logging("WARNING", "console")
    config = TrafficConfig(start=START, days=args.days, rate_per_day=args.rate, seed=args.seed)
    with served_simulator(FakeClock(START), "scenario-token") as handle:
        outcome = run_week(handle, args.redis_url, config)
    print(summary(outcome))
    raise SystemExit(1 if outcome.violations else 0)


if __name__ == "__main__":
    main()
