"""SLA policies: loading with located errors, clock arithmetic with pauses, compiled tier rules."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.api.models import Conversation, Message
from worker.rules import Snapshot, evaluate, load_texts
from worker.rules.context import EvalContext
from worker.rules.sla import SlaPolicy, clocks, deadline, elapsed, update_pauses

CAL = """
calendars:
  support:
    timezone: Europe/Berlin
    hours:
      mon: ["09:00-12:00", "13:00-18:00"]
      tue: ["09:00-12:00", "13:00-18:00"]
      wed: ["09:00-12:00", "13:00-18:00"]
      thu: ["09:00-12:00", "13:00-18:00"]
      fri: ["09:00-12:00", "13:00-18:00"]
    holidays: {country: DE, subdivision: BE}
agents: [{id: 1, name: Lead}]
pools: {leads: {members: [1]}}
"""
POLICY = """
sla_policies:
  std:
    applies_to: {channel: [webchat, whatsapp]}
    calendar: support
    first_response: 1h
    next_response: 2h
    pause: {stages: [13]}
    tiers:
      - {at: 80%, metrics: [first_response], then: [{note: warn}]}
      - at: 100%
        then: [{assign: {pool: leads}}, {move: {pipeline: 1, stage: 14}}]
  wall:
    applies_to: {channel: sms}
    first_response: 30m
    tiers:
      - {at: 1.0, hours: support, then: [{note: "late at night"}]}
"""
WED_10 = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)  # Wednesday 10:00 Berlin


def _load(text: str = POLICY) -> Any:
    return load_texts([("cal.yaml", CAL), ("sla.yaml", textwrap.dedent(text))])


RULESET = _load().ruleset
STD: SlaPolicy = next(p for p in RULESET.sla_policies if p.id == "std")


def _conv(**fields: Any) -> Conversation:
    base = {"id": 7, "channel": "webchat", "status": "open", "created_at": WED_10, "last_inbound_at": WED_10}
    return Conversation.model_validate(base | fields)


def _msg(i: str, direction: str, at: datetime, **extra: Any) -> Message:
    return Message.model_validate(
        {"_id": i, "conversation_id": 7, "direction": direction, "created_at": at} | extra
    )


def _fired(conv: Conversation, at: datetime, messages: list[Message] | None = None) -> dict[str, str]:
    ev = evaluate(RULESET, Snapshot(conv, messages if messages is not None else []), at)
    return {m.rule_id: m.firing_key for m in ev.matches}


# --- loading -------------------------------------------------------------------------------------


def test_policies_compile_to_named_rules() -> None:
    assert _load().ok
    ids = {r.id for r in RULESET.rules}
    assert {"sla-std-first-response-80", "sla-std-first-response-100", "sla-std-next-response-100"} <= ids
    assert "sla-std-next-response-80" not in ids  # the 80% tier names first_response only
    assert RULESET.get("sla-std-next-response-100").once == "per_response_cycle"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("  p:\n    calendar: nope\n    first_response: 1h\n    tiers: [{at: 1, then: [{note: x}]}]\n",
         "sla.yaml:3:15", "no calendar named 'nope'"),
        ("  p:\n    first_response: 1h\n    tiers: [{at: 80 percent, then: [{note: x}]}]\n",
         "sla.yaml:4:18", "is not a share"),
        ("  p:\n    tiers: [{at: 1, then: [{note: x}]}]\n", "sla.yaml:3:5", "give at least one target"),
        ("  p:\n    first_response: 1h\n    tiers: [{at: 1, metrics: [next_response], then: [{note: x}]}]\n",
         "sla.yaml:4:30", "sets no next_response target"),
        ("  p:\n    first_response: 1h\n    frist_response: 2h\n    tiers: [{at: 1, then: [{note: x}]}]\n",
         "sla.yaml:4:5", "unknown key 'frist_response'"),
        ("  p:\n    first_response: 1h\n    tiers: [{at: 1, then: [{assign: {pool: nobody}}]}]\n",
         "sla.yaml:4:", "no pool named 'nobody'"),
        # The API's status is only open/closed: a status pause can never be expressed.
        ("  p:\n    first_response: 1h\n    pause: {stages: [13], statuses: [pending]}\n"
         "    tiers: [{at: 1, then: [{note: x}]}]\n",
         "sla.yaml:4:12", "'statuses' cannot pause an SLA clock"),
    ],
)  # fmt: skip
def test_policy_errors_are_located(text: str, where: str, message: str) -> None:
    result = _load("sla_policies:\n" + text)
    assert not result.ok
    shown = [e.format() for e in result.errors]
    assert any(s.startswith(where) and message in s for s in shown), shown


def test_a_rule_can_use_an_sla_condition_and_unknown_policies_are_errors() -> None:
    rule = "rules:\n  - {id: r, when: {sla: {policy: %s, elapsed_share: 0.5}}, then: [{note: x}]}\n"
    assert _load(POLICY + rule % "std").ok
    bad = _load(POLICY + rule % "sdt")
    assert "no SLA policy named 'sdt' (did you mean 'std'?" in bad.errors[0].message


# --- clock arithmetic ---------------------------------------------------------------------------------


def test_business_deadline_skips_lunch_nights_weekends_and_holidays() -> None:
    fri_17 = datetime(2026, 3, 6, 16, 0, tzinfo=UTC)  # Friday 17:00 Berlin
    assert deadline(STD, fri_17, timedelta(hours=2), []) == datetime(2026, 3, 9, 9, 0, tzinfo=UTC)
    thu_before_easter = datetime(2026, 4, 2, 16, 30, tzinfo=UTC)  # 18:30 Thu; Good Friday + Easter Monday
    assert deadline(STD, thu_before_easter, timedelta(hours=1), []) == datetime(2026, 4, 7, 8, 0, tzinfo=UTC)
    eleven_thirty = datetime(2026, 3, 4, 10, 30, tzinfo=UTC)
    assert deadline(STD, eleven_thirty, timedelta(hours=1), []) == datetime(2026, 3, 4, 12, 30, tzinfo=UTC)


def test_pauses_stop_the_clock_and_it_resumes_where_it_stopped() -> None:
    pause = [(WED_10 + timedelta(minutes=20), WED_10 + timedelta(minutes=50))]
    assert deadline(STD, WED_10, timedelta(hours=1), pause) == WED_10 + timedelta(minutes=90)
    assert elapsed(STD, WED_10, WED_10 + timedelta(minutes=60), pause) == timedelta(minutes=30)
    still = [(WED_10 + timedelta(minutes=20), None)]
    assert deadline(STD, WED_10, timedelta(hours=1), still) is None
    # A budget used up before the pause began is not moved by it.
    assert deadline(STD, WED_10, timedelta(minutes=10), pause) == WED_10 + timedelta(minutes=10)


def test_update_pauses_opens_at_stage_entry_and_closes_at_the_next_one() -> None:
    entered = WED_10 + timedelta(minutes=5)
    waiting = _conv(pipeline_stage_id=13, stage_entered_at=entered)
    opened = update_pauses(STD, waiting, [], WED_10 + timedelta(minutes=7))
    assert opened == [(entered, None)]
    assert update_pauses(STD, waiting, opened, WED_10 + timedelta(minutes=9)) == opened
    back = _conv(pipeline_stage_id=12, stage_entered_at=WED_10 + timedelta(minutes=30))
    closed = update_pauses(STD, back, opened, WED_10 + timedelta(minutes=31))
    assert closed == [(entered, WED_10 + timedelta(minutes=30))]


# --- compiled tiers through the evaluator -------------------------------------------------------------


def test_first_response_tiers_fire_at_their_deadlines_not_before() -> None:
    conv = _conv()
    ev = evaluate(RULESET, Snapshot(conv, []), WED_10)
    assert ev.next_due["sla-std-first-response-80"] == WED_10 + timedelta(minutes=48)
    assert ev.next_due["sla-std-first-response-100"] == WED_10 + timedelta(hours=1)
    assert not _fired(conv, WED_10 + timedelta(minutes=47, seconds=59))
    assert set(_fired(conv, WED_10 + timedelta(minutes=48))) == {"sla-std-first-response-80"}
    assert (
        _fired(conv, WED_10 + timedelta(hours=1))["sla-std-first-response-100"]
        == "sla-std-first-response-100:7:c"
    )
    answered = _conv(last_outbound_at=WED_10 + timedelta(minutes=59))
    assert not _fired(answered, WED_10 + timedelta(hours=5))
    assert not _fired(_conv(channel="instagram"), WED_10 + timedelta(hours=5))  # not covered


def test_recorded_pauses_move_the_deadline() -> None:
    conv = _conv(pipeline_stage_id=12, stage_entered_at=WED_10 + timedelta(minutes=50))
    pauses = {"std": [(WED_10 + timedelta(minutes=20), WED_10 + timedelta(minutes=50))]}
    ev = evaluate(RULESET, Snapshot(conv, [], sla_pauses=pauses), WED_10 + timedelta(minutes=55))
    assert ev.next_due["sla-std-first-response-100"] == WED_10 + timedelta(minutes=90)
    paused = _conv(pipeline_stage_id=13, stage_entered_at=WED_10 + timedelta(minutes=20))
    ev = evaluate(RULESET, Snapshot(paused, []), WED_10 + timedelta(minutes=30))
    assert "sla-std-first-response-100" not in ev.next_due  # no timer while paused
    assert not _fired(paused, WED_10 + timedelta(hours=5))


def test_next_response_cycle_starts_at_the_first_unanswered_message_and_keys_on_it() -> None:
    replied = WED_10 + timedelta(minutes=10)
    first, second = WED_10 + timedelta(minutes=30), WED_10 + timedelta(minutes=40)
    conv = _conv(last_outbound_at=replied, last_inbound_at=second)
    messages = [_msg("a", "inbound", WED_10), _msg("b", "outbound", replied),
                _msg("c", "inbound", first), _msg("d", "inbound", second)]  # fmt: skip
    due = evaluate(RULESET, Snapshot(conv, messages), second).next_due["sla-std-next-response-100"]
    assert due == first + timedelta(hours=3)  # 10:30 Berlin + 2 business hours, lunch 12-13 skipped
    key = _fired(conv, due, messages)["sla-std-next-response-100"]
    assert key == f"sla-std-next-response-100:7:cy:{first.isoformat()}"
    ctx = EvalContext(conv, due, messages)
    (clock,) = [c for c in clocks(RULESET.sla_policies, ctx) if c.metric == "next_response"]
    assert clock.state == "breached" and clock.left == timedelta(0)


def test_tiers_wait_for_business_hours_but_not_past_a_closing_deadline() -> None:
    night = datetime(2026, 3, 4, 22, 0, tzinfo=UTC)  # 23:00 Berlin; wall-time policy on sms
    conv = _conv(channel="sms", created_at=night, last_inbound_at=night)
    ev = evaluate(RULESET, Snapshot(conv, []), night)
    assert ev.next_due["sla-wall-first-response-100"] == datetime(2026, 3, 5, 8, 0, tzinfo=UTC)
    assert not _fired(conv, night + timedelta(minutes=31))
    # A business-time deadline that lands exactly at closing (18:00) fires at 18:00.
    late = datetime(2026, 3, 4, 16, 0, tzinfo=UTC)  # 17:00 Berlin + 1 business hour = 18:00
    conv = _conv(created_at=late, last_inbound_at=late)
    at = datetime(2026, 3, 4, 17, 0, tzinfo=UTC)
    assert evaluate(RULESET, Snapshot(conv, []), late).next_due["sla-std-first-response-100"] == at
    assert "sla-std-first-response-100" in _fired(conv, at + timedelta(seconds=1))
