"""The evaluator: firing keys, due times, conflicts, caps, determinism, explain."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.api.models import Conversation, Message
from worker.rules import InMemoryState, RuleSet, Snapshot, evaluate, format_explanation, load_rules

NOW = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)  # Wed 11:00 Berlin
MakeRS = Callable[[str], RuleSet]


def conv(**fields: Any) -> Conversation:
    return Conversation.model_validate({"id": 7, "channel": "whatsapp", "status": "open"} | fields)


def one_rule(make: MakeRS, when: str, once: str = "per_conversation", extra: str = "") -> RuleSet:
    return make(f"- id: r\n  once: {once}\n{extra}  when: {when}\n  then: [{{note: x}}]\n")


@pytest.mark.parametrize(
    ("once", "fields", "situation"),
    [
        ("per_conversation", {}, "c"),
        ("per_inbound_message", {"last_inbound_at": "2026-03-04T09:00:00Z"}, "in:2026-03-04T09:00:00+00:00"),
        ("per_inbound_message", {}, "in:none"),
        (
            "per_stage_entry",
            {"pipeline_stage_id": 4, "stage_entered_at": "2026-03-04T08:00:00+01:00"},
            "st:4:2026-03-04T07:00:00+00:00",
        ),
        (
            "per_assignment",
            {"owner_id": 3, "assigned_at": "2026-03-04T09:30:00"},
            "as:3:2026-03-04T09:30:00+00:00",
        ),
        ("per_assignment", {}, "as:none:none"),
    ],
)
def test_firing_keys(make_ruleset: MakeRS, once: str, fields: dict[str, Any], situation: str) -> None:
    rs = one_rule(make_ruleset, "{status: open}", once)
    (match,) = evaluate(rs, Snapshot(conv(**fields)), NOW).matches
    assert match.firing_key == f"r:7:{situation}"


def test_inbound_key_falls_back_to_message_id(make_ruleset: MakeRS) -> None:
    rs = one_rule(make_ruleset, "{status: open}", "per_inbound_message")
    msg = Message.model_validate(
        {"_id": "abc", "conversation_id": 7, "direction": "inbound", "created_at": NOW}
    )
    (match,) = evaluate(rs, Snapshot(conv(), messages=[msg]), NOW).matches
    assert match.firing_key == "r:7:in:msg:abc"


def test_next_due_wall_time(make_ruleset: MakeRS) -> None:
    rs = one_rule(make_ruleset, "{status: open, waiting_for_reply: 15m}")
    inbound = NOW - timedelta(minutes=5)
    ev = evaluate(rs, Snapshot(conv(last_inbound_at=inbound)), NOW)
    assert not ev.matches
    assert ev.next_due == {"r": inbound + timedelta(minutes=15)}
    # At the due time it matches.
    assert evaluate(rs, Snapshot(conv(last_inbound_at=inbound)), ev.next_due["r"]).matches
    # A record-only part that fails means never (until the record changes).
    assert evaluate(rs, Snapshot(conv(status="closed", last_inbound_at=inbound)), NOW).next_due == {}


def test_next_due_business_time_skips_lunch_and_night(make_ruleset: MakeRS) -> None:
    rs = one_rule(make_ruleset, "{waiting_for_reply: {longer_than: 1h, business: support}}")
    inbound = datetime(2026, 3, 4, 10, 30, tzinfo=UTC)  # 11:30 Berlin: 30 min before lunch
    ev = evaluate(rs, Snapshot(conv(last_inbound_at=inbound)), inbound)
    assert ev.next_due == {"r": datetime(2026, 3, 4, 12, 30, tzinfo=UTC)}  # 13:30 Berlin
    late = datetime(2026, 3, 4, 16, 45, tzinfo=UTC)  # 17:45 Berlin, 15 min before closing
    ev = evaluate(rs, Snapshot(conv(last_inbound_at=late)), late)
    assert ev.next_due == {"r": datetime(2026, 3, 5, 8, 45, tzinfo=UTC)}  # 09:45 next morning


def test_next_due_all_waits_for_business_hours(make_ruleset: MakeRS) -> None:
    # Due by the wall clock at 18:30 Berlin, but only in business hours: next morning 09:00.
    rs = one_rule(make_ruleset, "{silent_for: 8h, in_business_hours: support}")
    outbound = datetime(2026, 3, 4, 9, 30, tzinfo=UTC)
    ev = evaluate(rs, Snapshot(conv(last_outbound_at=outbound)), NOW)
    assert ev.next_due == {"r": datetime(2026, 3, 5, 8, 0, tzinfo=UTC)}


def test_next_due_any_is_the_earliest_and_not_inverts(make_ruleset: MakeRS) -> None:
    rs = one_rule(make_ruleset, "{any: [{age: 2h}, {silent_for: 30m}]}")
    ev = evaluate(rs, Snapshot(conv(created_at=NOW, last_outbound_at=NOW - timedelta(minutes=10))), NOW)
    assert ev.next_due == {"r": NOW + timedelta(minutes=20)}
    rs = one_rule(make_ruleset, "{not: {in_business_hours: support}}")
    assert evaluate(rs, Snapshot(conv()), NOW).next_due == {"r": datetime(2026, 3, 4, 11, 0, tzinfo=UTC)}
    rs = one_rule(make_ruleset, "{status: open}")
    assert evaluate(rs, Snapshot(conv(status="closed")), NOW).next_due == {}


def test_conflicts_priority_wins_and_loser_is_reported(make_ruleset: MakeRS) -> None:
    rs = make_ruleset(
        """\
- {id: high, priority: 10, when: {status: open}, then: [{assign: 1}]}
- {id: low, priority: 1, when: {status: open}, then: [{assign: 2}, {note: x}]}
- {id: same, priority: 0, when: {status: open}, then: [{assign: 1}]}
- {id: other, priority: 0, when: {status: open}, then: [{move: {pipeline: 1, stage: 2}}]}
"""
    )
    ev = evaluate(rs, Snapshot(conv()), NOW, explain=True)
    assert [m.rule_id for m in ev.matches] == ["high", "other", "same"]
    (conflict,) = ev.conflicts
    assert (conflict.slot, conflict.winner, conflict.loser) == ("owner", "high", "low")
    low = next(r for r in ev.results if r.rule_id == "low")
    assert low.matched and low.blocked and "conflict" in low.blocked


def test_caps_and_team_started(make_ruleset: MakeRS) -> None:
    rs = one_rule(make_ruleset, "{status: open}", extra="  max_per_conversation: 2\n  max_per_hour: 3\n")
    state = InMemoryState()
    for _ in range(2):
        assert evaluate(rs, Snapshot(conv()), NOW, state).matches
        state.record("r", 7)
    assert not evaluate(rs, Snapshot(conv()), NOW, state).matches
    state.record("r", 8)
    assert not evaluate(rs, Snapshot(conv(id=9)), NOW, state).matches  # 3 in the last hour
    rs = one_rule(make_ruleset, "{status: open}", extra="  skip_team_started: true\n")
    assert not evaluate(rs, Snapshot(conv(initiated_by="team")), NOW).matches
    assert evaluate(rs, Snapshot(conv(initiated_by="customer")), NOW).matches


def test_naive_now_is_refused(make_ruleset: MakeRS) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(one_rule(make_ruleset, "{status: open}"), Snapshot(conv()), datetime(2026, 1, 1))


def test_explain_text_and_json(make_ruleset: MakeRS) -> None:
    rs = make_ruleset(
        """\
- {id: fires, description: Close stale, when: {status: open}, then: [{set_status: closed}]}
- {id: later, when: {waiting_for_reply: 15m}, then: [{note: x}]}
"""
    )
    ev = evaluate(rs, Snapshot(conv(last_inbound_at=NOW)), NOW, explain=True)
    text = format_explanation(ev)
    assert "rule 'fires': MATCH - fires" in text
    assert "yes status is open  [seen: open]" in text
    assert "does: close the conversation" in text
    assert "rule 'later': no match - due at 2026-03-04T10:15:00+00:00" in text
    data = json.loads(format_explanation(ev, "json"))
    later = next(r for r in data["rules"] if r["id"] == "later")
    assert later["next_due"] == "2026-03-04T10:15:00+00:00" and later["reasons"][0]["result"] is False
    assert data["rules"][0]["firing_key"] == "fires:7:c"


def test_explain_says_matches_already_fired_instead_of_fires(make_ruleset: MakeRS) -> None:
    """A match whose firing the ledger holds is not headlined "MATCH - fires"."""
    rs = make_ruleset("- {id: fires, when: {status: open}, then: [{set_status: closed}]}\n")
    ev = evaluate(rs, Snapshot(conv()), NOW, explain=True)
    text = format_explanation(ev, "text", {"fires": "2026-03-04 09:58:00Z"})
    assert "rule 'fires': matches - already fired at 2026-03-04 09:58:00Z" in text
    assert "MATCH - fires" not in text and "does:" not in text and "did: close the conversation" in text
    assert "it does not fire again for this situation" in text
    (rule,) = json.loads(format_explanation(ev, "json", {"fires": "2026-03-04 09:58:00Z"}))["rules"]
    assert rule["fires"] is False and rule["already_fired_at"] == "2026-03-04 09:58:00Z"


SHIPPED = load_rules(["rules"], recursive=True).ruleset
times = st.one_of(
    st.none(), st.integers(min_value=0, max_value=60 * 24 * 5).map(lambda m: NOW - timedelta(minutes=m))
)
convs = st.builds(
    conv,
    status=st.sampled_from(["open", "closed"]),
    channel=st.sampled_from(["whatsapp", "sms", "webchat"]),
    owner_id=st.one_of(st.none(), st.sampled_from([101, 102, 201])),
    ai_assistant_id=st.one_of(st.none(), st.just(7)),
    created_at=times,
    last_inbound_at=times,
    last_outbound_at=times,
    tags=st.lists(st.sampled_from(["vip", "billing"]), max_size=2),
    initiated_by=st.sampled_from([None, "customer", "team"]),
)


@settings(max_examples=150, deadline=None)
@given(convs, st.integers(min_value=0, max_value=60 * 24 * 7))
def test_shipped_rules_are_deterministic_and_due_times_are_consistent(c: Conversation, minutes: int) -> None:
    rs = SHIPPED
    now = NOW + timedelta(minutes=minutes)
    first = evaluate(rs, Snapshot(c), now, explain=True)
    again = evaluate(rs, Snapshot(c.model_copy(deep=True)), now, explain=True)
    assert first == again
    for rule_id, due in first.next_due.items():
        assert due > now
        rule = rs.get(rule_id)
        assert rule is not None and not rule.test(_ctx(c, due - timedelta(microseconds=1)))
        assert rule.test(_ctx(c, due))  # exactly then, not just "no earlier"


def _ctx(c: Conversation, at: datetime) -> Any:
    from worker.rules.context import EvalContext

    return EvalContext(c, at)
