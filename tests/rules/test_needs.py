"""Which reads a snapshot needs (worker/rules/needs.py): skipping a conversation's messages or
contact where no rule that uses them can match must never change what the evaluator decides.

The main test is an equivalence over generated conversations: for each one, the evaluation on
the snapshot the pruned reader would build (messages and contact left None where `ReadNeeds`
says so) equals the evaluation on the full snapshot: the same matches with the same firing
keys, and the same due times. It runs on the shipped rules, every example rule file, and a
rule book written to hit the edges (negated message conditions, `any`, firing keys that read
messages, SLA next-response cycles, follow-up windows).
"""

from __future__ import annotations

import random
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from worker.api.models import Contact, Conversation, Message
from worker.rules import RuleSet, Snapshot, evaluate, load_texts
from worker.rules.context import Pauses
from worker.rules.cycles import messages_needed_since
from worker.rules.needs import ReadNeeds, Reads

SHIPPED = Path(__file__).resolve().parents[2] / "rules"
T0 = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)  # a Wednesday, 10:00 in Berlin

EDGES = """
calendars:
  support:
    timezone: Europe/Berlin
    hours:
      mon: ["09:00-12:00", "13:00-18:00"]
      tue: ["09:00-12:00", "13:00-18:00"]
      wed: ["09:00-12:00", "13:00-18:00"]
      thu: ["09:00-12:00", "13:00-18:00"]
      fri: ["09:00-12:00", "13:00-18:00"]
sla_policies:
  fast:
    calendar: support
    first_response: 30m
    next_response: 1h
    pause: {stages: [13]}
    applies_to: {channel: [whatsapp, sms, webchat]}
    tiers:
      - {at: 50%, then: [{note: "half"}]}
      - {at: 100%, then: [{note: "breach {{ contact.name }}"}]}
rules:
  - id: refund-in-stage
    when: {status: open, stage: 5, waiting_for_reply: 1m, message_text: {keywords: [refund]}}
    then: [{note: refund}]
  - id: not-spam
    when: {status: open, stage: [5, 12], not: {message_text: {keywords: [spam]}}}
    then: [{note: clean}]
  - id: help-or-vip
    when: {any: [{message_text: {keywords: [help]}}, {tags: {any: [vip]}}], owner: unset}
    then: [{note: help}]
  - id: cycle-key
    once: per_response_cycle
    when: {waiting_for_reply: {longer_than: 30m, shorter_than: 6h}, channel: [sms, webchat]}
    then: [{note: cycle}]
  - id: inbound-key
    once: per_inbound_message
    when: {status: open, age: 1h, tags: {none: [muted]}}
    then: [{note: inbound}]
  - id: nudge-window
    once: per_team_reply
    when: {silent_after_reply: {longer_than: 1h, shorter_than: 3h, business: support}, channel: sms}
    then: [{reply: "still there?"}]
  - id: close-late
    once: per_team_reply
    when: {silent_after_reply: 10h, not: {quiet_hours: {timezone: Europe/Berlin}}}
    then: [{reply: "closing {{ contact.first_name }}"}, {set_status: closed}]
  - id: named-contact
    when: {contact: {field: name, set: true}, silent_for: {longer_than: 2h, business: support}}
    then: [{note: named}]
  - id: not-named
    when: {stage: 14, not: {contact: {field: name, set: true}}}
    then: [{note: unnamed}]
"""


# One source of message reads each, so that nothing else reads the messages for them.
KEYS_ONLY = """
rules:
  - id: cycle-key
    once: per_response_cycle
    when: {waiting_for_reply: {longer_than: 30m, shorter_than: 6h}}
    then: [{note: cycle}]
  - id: reply-key
    once: per_team_reply
    when: {silent_for: 1h, stage: [5, 12]}
    then: [{note: anchored}]
"""
NEGATION_ONLY = """
rules:
  - id: help-outside-escalation
    when: {not: {stage: [13, 14]}, message_text: {keywords: [help]}}
    then: [{note: help}]
"""
TARGETED = {"edges": EDGES, "keys-only": KEYS_ONLY, "negation-only": NEGATION_ONLY}


def _rule_books() -> dict[str, RuleSet]:
    books = {
        name: load_texts([(f"{name}.yaml", textwrap.dedent(text))], strict=True).ruleset
        for name, text in TARGETED.items()
    }
    shipped = [(str(p), p.read_text()) for p in sorted(SHIPPED.glob("*.yaml"))]
    books["shipped"] = load_texts(shipped, strict=True).ruleset
    base = [(f, t) for f, t in shipped if Path(f).name in ("calendars.yaml", "roster.yaml")]
    for example in sorted((SHIPPED / "examples").glob("*.yaml")):
        result = load_texts([*base, (str(example), example.read_text())])
        if result.ok and result.ruleset.rules:
            books[example.stem] = result.ruleset
    return books


BOOKS = _rule_books()


def _message(rng: random.Random, cid: int, n: int, at: datetime) -> Message:
    direction = rng.choice(["inbound", "inbound", "outbound"])
    kind = "note" if direction == "outbound" and rng.random() < 0.2 else "text"
    text = rng.choice(["hi", "refund please", "help!", "spam spam", "thanks", None])
    sender = rng.choice(["user", "bot"]) if direction == "outbound" else None
    return Message.model_validate(
        {
            "_id": f"m{cid}-{n}",
            "conversation_id": cid,
            "direction": direction,
            "message_type": kind,
            "message_text": text,
            "created_at": at,
            "sender_type": sender,
        }
    )


def _conversation(rng: random.Random, cid: int) -> tuple[Conversation, list[Message]]:
    created = T0 - timedelta(hours=rng.uniform(0, 200))
    at, messages = created, []
    for n in range(rng.choice([0, 1, 2, 3, 5, 8])):
        at += timedelta(minutes=rng.choice([0, 1, 7, 45, 200, 900]))  # 0: two at one instant
        messages.append(_message(rng, cid, n, at))
    inbound = [m.created_at for m in messages if m.direction == "inbound"]
    replies = [m.created_at for m in messages if m.direction == "outbound" and m.message_type != "note"]
    owner = rng.choice([None, None, 101, 102, 103, 201, 1, 2])
    stage = rng.choice([None, 5, 12, 13, 14])
    record: dict[str, Any] = {
        "id": cid,
        "channel": rng.choice(["whatsapp", "instagram", "messenger", "webchat", "sms", "playground"]),
        "status": rng.choice(["open"] * 9 + ["closed"]),
        "owner_id": owner,
        "assigned_at": None if owner is None else created + timedelta(minutes=rng.uniform(0, 600)),
        "ai_assistant_id": rng.choice([None, 7]),
        "pipeline_id": 1,
        "pipeline_stage_id": stage,
        "stage_entered_at": created + timedelta(minutes=rng.uniform(0, 900)),
        "contact_id": cid,
        "created_at": created,
        "updated_at": at,
        "last_inbound_at": max(inbound, default=None),
        "last_outbound_at": max(replies, default=None),
        "last_message_at": max([*inbound, *replies], default=None),
        "unread_count": rng.choice([0, 1, 4]),
        "tags": rng.sample(["vip", "billing", "pinned", "muted"], rng.choice([0, 1, 2])),
        "initiated_by": rng.choice(["customer", "team"]),
    }
    return Conversation.model_validate(record), messages


def _contact(rng: random.Random, cid: int) -> Contact | None:
    if rng.random() < 0.1:
        return None
    zone = rng.choice(["Europe/Berlin", "America/New_York", "Asia/Tokyo", None, "Not/AZone"])
    name = rng.choice(["Ada Lovelace", None])
    return Contact.model_validate({"id": cid, "name": name, "first_name": name, "timezone": zone})


def _pauses(rng: random.Random, ruleset: RuleSet, now: datetime) -> Pauses:
    if rng.random() < 0.7:
        return {}
    start = now - timedelta(hours=rng.uniform(1, 30))
    end = None if rng.random() < 0.3 else start + timedelta(minutes=rng.uniform(5, 300))
    return {policy.id: [(start, end)] for policy in ruleset.sla_policies}


def _verdict(ruleset: RuleSet, snapshot: Snapshot, now: datetime) -> tuple[object, ...]:
    evaluation = evaluate(ruleset, snapshot, now, with_reasons=False)
    return tuple((m.rule_id, m.firing_key) for m in evaluation.matches), evaluation.next_due


@pytest.mark.parametrize("book", sorted(BOOKS))
def test_skipped_reads_never_change_a_verdict(book: str) -> None:
    ruleset = BOOKS[book]
    needs = ReadNeeds(ruleset)
    rng = random.Random(book)
    counts = {"messages": 0, "contact": 0}
    for cid in range(1, 1500):
        conversation, messages = _conversation(rng, cid)
        window = messages_needed_since(conversation, ruleset.reads_customer_text)
        read = tuple(
            sorted(
                (m for m in messages if m.message_type != "note" and window.holds(m.created_at)),
                key=lambda m: (m.created_at, m.id),
                reverse=True,
            )
        )
        contact = _contact(rng, cid)
        now = T0 + timedelta(minutes=rng.uniform(-600, 7 * 24 * 60))
        pauses = _pauses(rng, ruleset, now)
        reads = needs.of(conversation, now, pauses)
        full = Snapshot(conversation, read, contact, pauses)
        pruned = Snapshot(
            conversation, read if reads.messages else None, contact if reads.contact else None, pauses
        )
        assert _verdict(ruleset, pruned, now) == _verdict(ruleset, full, now), (conversation, now, reads)
        counts["messages"] += not reads.messages
        counts["contact"] += not reads.contact
    if book in (*TARGETED, "shipped"):  # the test means something only where reads are skipped
        assert counts["messages"] > 100, counts
    if book in ("edges", "shipped"):
        assert counts["contact"] > 100, counts


def test_the_shipped_rules_skip_reads_the_record_rules_out() -> None:
    """Customer waiting with no team reply yet: only the first-response SLA (no message read, no
    contact condition) and routing apply; the team replied last: the follow-ups need both."""
    needs = ReadNeeds(BOOKS["shipped"])
    fresh = Conversation.model_validate(
        {"id": 1, "channel": "sms", "status": "open", "created_at": T0, "last_inbound_at": T0}
    )
    assert needs.of(fresh, T0 + timedelta(hours=3)) == Reads(messages=False, contact=False)
    answered = fresh.model_copy(update={"last_outbound_at": T0 + timedelta(minutes=5)})
    assert needs.of(answered, T0 + timedelta(hours=3)) == Reads(messages=True, contact=True)
    waiting_again = answered.model_copy(update={"last_inbound_at": T0 + timedelta(minutes=9)})
    assert needs.of(waiting_again, T0 + timedelta(hours=3)) == Reads(messages=True, contact=False)


def test_a_stage_rule_needs_messages_only_in_its_stage() -> None:
    """`stage` + `waiting_for_reply` + a message condition: no read while the stage rules it out,
    a read as soon as the record is in the stage (judged on each pass's record)."""
    ruleset = load_texts([("r.yaml", textwrap.dedent("""
        rules:
          - id: refund-in-stage
            when: {stage: 5, waiting_for_reply: 1m, message_text: {keywords: [refund]}}
            then: [{note: refund}]
    """))], strict=True).ruleset  # fmt: skip
    needs = ReadNeeds(ruleset)
    record = {"id": 1, "channel": "sms", "created_at": T0, "last_inbound_at": T0}
    elsewhere = Conversation.model_validate({**record, "pipeline_stage_id": 4})
    in_stage = Conversation.model_validate({**record, "pipeline_stage_id": 5})
    answered = Conversation.model_validate({**record, "pipeline_stage_id": 5, "last_outbound_at": T0})
    assert needs.of(elsewhere, T0 + timedelta(hours=1)).messages is False
    assert needs.of(in_stage, T0 + timedelta(hours=1)).messages is True
    # Not waiting yet (waiting_for_reply becomes true within the minute): still read, the due
    # time must come out right.
    assert needs.of(in_stage, T0 + timedelta(seconds=10)).messages is True
    assert needs.of(answered, T0 + timedelta(hours=1)).messages is False  # nobody is waiting
