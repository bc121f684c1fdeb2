"""One table row (or more) per condition type: YAML `when`, record fields, expected verdict."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.api.models import Contact, Conversation, Message
from worker.rules import CONDITIONS, RuleSet, Snapshot, evaluate

NOW = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)  # Wed 11:00 Berlin: open
AGO = {n: NOW - timedelta(minutes=n) for n in (1, 5, 20, 90, 60 * 30)}

CASES: list[tuple[str, str, dict[str, Any], bool]] = [
    ("channel", "channel: whatsapp", {}, True),
    ("channel", "channel: [sms, webchat]", {}, False),
    ("status", "status: open", {}, True),
    ("status", "status: {in: [closed]}", {}, False),
    ("owner", "owner: unset", {}, True),
    ("owner", "owner: set", {"owner_id": 3}, True),
    ("owner", "owner: [3, 4]", {"owner_id": 4}, True),
    ("owner", "owner: 3", {"owner_id": 4}, False),
    ("ai_assistant", "ai_assistant: {set: true}", {"ai_assistant_id": 9}, True),
    ("ai_assistant", "ai_assistant: 9", {}, False),
    ("pipeline", "pipeline: 2", {"pipeline_id": 2}, True),
    ("stage", "stage: {in: [5, 6]}", {"pipeline_stage_id": 7}, False),
    ("tags", "tags: vip", {"tags": ["vip", "x"]}, True),
    ("tags", "tags: {all: [vip, x]}", {"tags": ["vip"]}, False),
    ("tags", "tags: {none: [spam]}", {"tags": ["spam"]}, False),
    ("unread_count", "unread_count: {gt: 2, lte: 5}", {"unread_count": 5}, True),
    ("unread_count", "unread_count: {eq: 0}", {"unread_count": 1}, False),
    ("initiated_by", "initiated_by: customer", {"initiated_by": "customer"}, True),
    ("initiated_by", "initiated_by: customer", {}, False),  # unknown is false
    ("team_replied", "team_replied: false", {}, True),
    ("team_replied", "team_replied: true", {"last_outbound_at": AGO[5]}, True),
    ("waiting_for_reply", "waiting_for_reply: 15m", {"last_inbound_at": AGO[20]}, True),
    ("waiting_for_reply", "waiting_for_reply: 15m", {"last_inbound_at": AGO[5]}, False),
    ("assigned_for", "assigned_for: 15m", {"owner_id": 1, "assigned_at": AGO[20]}, True),
    ("assigned_for", "assigned_for: 15m", {"assigned_at": AGO[20]}, False),  # no owner
    (
        "owner_unresponsive",
        "owner_unresponsive: 15m",
        {"owner_id": 1, "assigned_at": AGO[90], "last_inbound_at": AGO[20]},
        True,
    ),
    (
        "owner_unresponsive",
        "owner_unresponsive: 15m",
        {"owner_id": 1, "assigned_at": AGO[5], "last_inbound_at": AGO[90]},
        False,
    ),
    ("owner_unavailable", "owner_unavailable: 10m", {"owner_id": 1}, False),  # on shift
    ("owner_unavailable", "owner_unavailable: 10m", {"owner_id": 3}, False),  # not in the roster
    (
        "waiting_for_reply",
        "waiting_for_reply: 15m",
        {"last_inbound_at": AGO[90], "last_outbound_at": AGO[20]},
        False,
    ),
    (
        "waiting_for_reply",
        "waiting_for_reply: {longer_than: 1m, shorter_than: 10m}",
        {"last_inbound_at": AGO[5]},
        True,
    ),
    # 20 wall minutes at 10:40-11:00 Berlin on a Wednesday are 20 business minutes too.
    (
        "waiting_for_reply",
        "waiting_for_reply: {longer_than: 15m, business: support}",
        {"last_inbound_at": AGO[20]},
        True,
    ),
    ("silent_for", "silent_for: 1h", {"last_inbound_at": AGO[60 * 30], "last_outbound_at": AGO[90]}, True),
    ("silent_for", "silent_for: 1h", {"last_inbound_at": AGO[5], "last_outbound_at": AGO[90]}, False),
    ("age", "age: {shorter_than: 1h}", {"created_at": AGO[20]}, True),
    ("age", "age: 1h", {}, False),  # no created_at
    ("in_stage_for", "in_stage_for: 1d", {"stage_entered_at": AGO[60 * 30]}, True),
    ("in_business_hours", "in_business_hours: support", {}, True),
    ("in_business_hours", "not: {in_business_hours: {calendar: support}}", {}, False),
]


def _ruleset(make_ruleset: Callable[[str], RuleSet], when: str) -> RuleSet:
    indented = "\n".join("      " + line for line in when.splitlines())
    return make_ruleset(f"- id: r\n  when:\n{indented}\n  then: [{{note: x}}]\n")


@pytest.mark.parametrize(
    ("key", "when", "fields", "expected"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_condition(
    make_ruleset: Callable[[str], RuleSet], key: str, when: str, fields: dict[str, Any], expected: bool
) -> None:
    rs = _ruleset(make_ruleset, when)
    conv = Conversation.model_validate({"id": 1, "channel": "whatsapp", "status": "open"} | fields)
    result = evaluate(rs, Snapshot(conv), NOW, explain=True)
    assert bool(result.matches) is expected
    reasons = result.results[0].reasons
    assert any(key in r.path for r in reasons)
    assert all(r.label for r in reasons)


def test_every_registered_condition_has_a_case() -> None:
    # sla, quiet_hours and silent_after_reply need policies, contacts or messages:
    # tests/rules/test_sla.py and tests/rules/test_followups.py cover them.
    elsewhere = {"contact", "message_text", "sla", "quiet_hours", "silent_after_reply"}
    assert set(CONDITIONS) - {c[0] for c in CASES} == elsewhere


def test_contact_conditions(make_ruleset: Callable[[str], RuleSet]) -> None:
    conv = Conversation(id=1, channel="sms")
    contact = Contact(id=2, name="Ann", email="ann@bigcorp.example", plan="gold")
    for when, expected in [
        ("contact: {field: email, regex: '@bigcorp'}", True),
        ("contact: {field: name, equals: Bob}", False),
        ("contact: {field: plan, equals: gold}", True),  # a custom field the API returned
        ("contact: {field: phone, set: false}", True),
    ]:
        rs = _ruleset(make_ruleset, when)
        assert rs.needs_contact
        assert bool(evaluate(rs, Snapshot(conv, contact=contact), NOW).matches) is expected, when
        assert not evaluate(rs, Snapshot(conv), NOW).matches  # no contact loaded: false


def test_message_text(make_ruleset: Callable[[str], RuleSet]) -> None:
    conv = Conversation(id=1, channel="sms")

    def msg(i: int, direction: str, text: str) -> Message:
        return Message.model_validate(
            {"_id": f"m{i}", "conversation_id": 1, "direction": direction, "message_text": text,
             "created_at": NOW - timedelta(minutes=10 - i)}
        )  # fmt: skip

    messages = [
        msg(1, "inbound", "I want a REFUND"),
        msg(2, "outbound", "refund?"),
        msg(0, "inbound", "hello"),
    ]
    for when, expected in [
        ("message_text: refund", True),
        ("message_text: {keywords: [refund], case_sensitive: true}", False),
        ("message_text: {regex: 'want a \\w+'}", True),
        ("message_text: hello", False),  # not the latest inbound message
        ("message_text: refun", False),  # keywords are whole words
    ]:
        rs = _ruleset(make_ruleset, when)
        assert rs.needs_messages
        assert bool(evaluate(rs, Snapshot(conv, messages=messages), NOW).matches) is expected, when
        assert not evaluate(rs, Snapshot(conv), NOW).matches  # messages not loaded: false
