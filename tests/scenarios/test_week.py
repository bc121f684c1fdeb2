"""The three jobs over a simulated week: routing, SLA escalation, follow-ups.

One week of seeded traffic runs through the real loop on a fake clock; every
property is checked against the simulator's audit log (tests/scenarios/week.py).
The other tests tamper with a real run's history to show each check can fail.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.scenarios.conftest import option
from tests.scenarios.hours import load_hours
from tests.scenarios.order_checks import check_order
from tests.scenarios.properties import (
    ORG_ZONE,
    Verdict,
    actual_firings,
    check_firings,
    check_quiet_and_window,
    expected_firings,
    specs,
)
from tests.scenarios.routing_checks import check_routing, load_roster
from tests.scenarios.timeline import BULK, History, build_history
from tests.scenarios.traffic import TrafficConfig
from tests.scenarios.week import ROSTER, START, Outcome, run_week, summary
from worker.clock import FakeClock
from worker.simulator.audit import AuditEntry
from worker.simulator.testing import served_simulator

# The shared week runs once for the module; on a busy 2-core machine it can take minutes.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def week(pytestconfig: pytest.Config) -> tuple[Outcome, list[AuditEntry]]:
    """One seeded week through the real loop, shared by the property test and the tamper tests."""
    config = TrafficConfig(
        start=START,
        days=option(pytestconfig, "days"),
        rate_per_day=option(pytestconfig, "rate"),
        seed=int(option(pytestconfig, "seed")),
    )
    with served_simulator(FakeClock(), "scenario-token") as handle:
        outcome = run_week(handle, os.environ.get("REDIS_URL", ""), config)
        return outcome, handle.sim.audit_log()


@pytest.mark.slow
def test_a_week_of_traffic_keeps_every_property(week: tuple[Outcome, list[AuditEntry]]) -> None:
    outcome, _ = week
    print("\n" + summary(outcome))
    assert outcome.violations == []
    # The week must exercise every job, or a silent worker would pass.
    sla, followup, routing = (outcome.verdicts[j] for j in ("sla", "followup", "routing"))
    assert sla.counts["sla-scn-first-response-100"] > 0 and sla.counts["sla-scn-next-response-100"] > 0
    assert followup.counts["scn-nudge-1"] > 0 and followup.counts["scn-close"] > 0
    # Pauses moved some SLA deadlines and quiet hours held back some nudges.
    assert sla.counts["moved by a pause"] > 0 and followup.counts["waited out quiet hours"] > 0
    assert routing.expected > 0 and outcome.run.execution_errors == []
    # Multi-action rules ran in order, and the workers were stopped with work queued.
    order = outcome.verdicts["order"].counts
    assert order["scn-route-after-hours"] > 0 and order["sla-scn-first-response-100"] > 0
    assert order["scn-close"] > 0
    assert outcome.run.lagged_steps > 0


@pytest.fixture
def short_run(week: tuple[Outcome, list[AuditEntry]]) -> tuple[Outcome, list[AuditEntry]]:
    """The tamper tests change a copy of the shared week's history; a clean week is their start."""
    outcome, audit = week
    assert outcome.violations == [], summary(outcome)
    return outcome, list(audit)


def _firing_violations(outcome: Outcome, audit: list[AuditEntry]) -> list[str]:
    hours = load_hours(ROSTER)
    history = build_history(outcome.run.played, audit)
    rules = specs(hours)
    lag = outcome.run.lag
    expected = expected_firings(history, rules, outcome.run.end, lag)
    verdicts = check_firings(expected, actual_firings(history, rules), rules, lag)
    return [v for verdict in verdicts.values() for v in verdict.violations]


def _sends(audit: list[AuditEntry], marker: str) -> list[AuditEntry]:
    return [
        e
        for e in audit
        if isinstance(e.body, dict) and str(e.body.get("message_text", "")).startswith(marker)
    ]


@pytest.mark.slow
def test_the_checks_catch_a_missed_late_duplicated_or_early_firing(
    short_run: tuple[Outcome, list[AuditEntry]],
) -> None:
    outcome, audit = short_run
    breach = _unlagged(outcome, _sends(audit, "[scn-sla-breach]"))
    nudge = _unlagged(outcome, _sends(audit, "[scn-nudge-1]"))
    missed = [e for e in audit if e is not breach]
    assert any("missed" in v for v in _firings(outcome, missed))
    late = [dataclasses.replace(e, time=e.time + timedelta(seconds=3)) if e is nudge else e for e in audit]
    assert any("scn-nudge-1" in v for v in _firings(outcome, late))
    twice = [*audit, dataclasses.replace(nudge, seq=10**6, time=nudge.time + timedelta(hours=1))]
    assert any("unexpected" in v for v in _firings(outcome, twice))
    early = [dataclasses.replace(e, time=e.time - timedelta(seconds=5)) if e is breach else e for e in audit]
    assert any("sla-scn-first-response-100" in v for v in _firings(outcome, early))


def _unlagged(outcome: Outcome, sends: list[AuditEntry]) -> AuditEntry:
    """The first send well clear of the lagging workers (their window allows lateness)."""
    lag = outcome.run.lag
    margin = timedelta(minutes=1)
    return next(e for e in sends if lag is None or not lag.start - margin <= e.time <= lag.end + margin)


def _firings(outcome: Outcome, audit: list[AuditEntry]) -> list[str]:
    return _firing_violations(outcome, sorted(audit, key=lambda e: e.time))


@pytest.mark.slow
def test_the_routing_checks_catch_a_wrong_agent(short_run: tuple[Outcome, list[AuditEntry]]) -> None:
    outcome, audit = short_run
    hours = load_hours(ROSTER)
    roster = load_roster(ROSTER)
    first = next(e for e in audit if isinstance(e.body, dict) and e.body.get("action") == "assign")
    other = next(m for m in roster.members if m != first.body["owner_id"])
    swapped = [dataclasses.replace(e, body={**e.body, "owner_id": other}) if e is first else e for e in audit]
    history: History = build_history(outcome.run.played, swapped)
    assert any("round robin" in v for v in check_routing(history, roster, hours, outcome.run.lag).violations)


def _direct_followup_violations(outcome: Outcome, audit: list[AuditEntry]) -> list[str]:
    hours = load_hours(ROSTER)
    history = build_history(outcome.run.played, sorted(audit, key=lambda e: e.time))
    verdict = Verdict("followup")
    check_quiet_and_window(history, specs(hours), hours, verdict)
    return verdict.violations


@pytest.mark.slow
def test_the_checks_catch_an_sla_clock_that_ignores_pauses(
    short_run: tuple[Outcome, list[AuditEntry]],
) -> None:
    """Judged as if nobody had parked a conversation, the worker's pause-shifted firings are off."""
    outcome, audit = short_run
    unparked = dataclasses.replace(outcome.run, played=[p for p in outcome.run.played if p.kind != "stage"])
    assert any(
        v.startswith("sla-scn-")
        for v in _firing_violations(dataclasses.replace(outcome, run=unparked), audit)
    )


@pytest.mark.slow
def test_the_checks_catch_a_nudge_at_night_twice_or_a_close_never_answered(
    short_run: tuple[Outcome, list[AuditEntry]],
) -> None:
    outcome, audit = short_run
    assert _direct_followup_violations(outcome, audit) == []
    zones = {p.conversation_id: p.zone for p in outcome.run.played if p.kind == "arrive"}
    nudge = _sends(audit, "[scn-nudge-1]")[0]
    zone = ZoneInfo(zones[nudge.body["conversation_id"]] or ORG_ZONE)
    night = nudge.time.astimezone(zone).replace(hour=23, minute=30).astimezone(UTC)
    at_night = [dataclasses.replace(e, time=night) if e is nudge else e for e in audit]
    assert any("quiet hours" in v for v in _direct_followup_violations(outcome, at_night))
    twice = [*audit, dataclasses.replace(nudge, seq=10**6, time=nudge.time + timedelta(minutes=1))]
    assert any("twice" in v for v in _direct_followup_violations(outcome, twice))
    # A close one second after a customer message, before anyone answered it.
    asked = next(p for p in outcome.run.played if p.kind == "customer" and p.accepted)
    bulk = next(e for e in audit if e.applied and e.path == BULK)
    bogus = dataclasses.replace(
        bulk,
        seq=10**6 + 1,
        time=asked.at + timedelta(seconds=1),
        body={"action": "update_status", "status": "closed", "conversation_ids": [asked.conversation_id]},
    )
    assert any("not answered" in v for v in _direct_followup_violations(outcome, [*audit, bogus]))


@pytest.mark.slow
def test_the_order_check_catches_a_later_action_run_first(
    short_run: tuple[Outcome, list[AuditEntry]],
) -> None:
    """Swap a breach note with the lead's assignment that followed it in the same tick."""
    _, audit = short_run
    note = _sends(audit, "[scn-sla-breach]")[0]
    cid = note.body["conversation_id"]
    assign = next(
        e
        for e in audit
        if e.path == BULK
        and e.body.get("action") == "assign"
        and e.body.get("owner_id") == 401
        and cid in e.body.get("conversation_ids", [])
        and e.time == note.time
    )
    swapped = [
        dataclasses.replace(e, seq=assign.seq if e is note else note.seq) if e in (note, assign) else e
        for e in audit
    ]
    assert any("came before its first" in v for v in check_order(swapped).violations)
    assert check_order(audit).violations == []


@pytest.mark.slow
def test_the_checks_see_the_lagging_workers(short_run: tuple[Outcome, list[AuditEntry]]) -> None:
    """Judged as if the workers never stopped, what they ran after the restart is late."""
    outcome, audit = short_run
    hours = load_hours(ROSTER)
    unlagged = dataclasses.replace(outcome.run, lag=None)
    history = build_history(unlagged.played, audit)
    rules = specs(hours)
    firings = check_firings(
        expected_firings(history, rules, unlagged.end), actual_firings(history, rules), rules
    )
    routing = check_routing(history, load_roster(ROSTER), hours)
    late = [v for verdict in [*firings.values(), routing] for v in verdict.violations]
    assert late, "the lag delayed nothing: the scenario does not exercise lagging workers"
