"""Follow-up sequences: the anchor, its firing key, cancellation and restart; quiet hours."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.api.models import Contact, Conversation, Message
from worker.rules import Snapshot, evaluate, load_texts

RULES = load_texts([("f.yaml", textwrap.dedent("""
rules:
  - id: nudge
    once: per_team_reply
    when:
      silent_after_reply: {longer_than: 24h, shorter_than: 48h}
      not: {quiet_hours: {start: "21:00", end: "08:00", timezone: Europe/Berlin}}
    then: [{reply: {text: nudge}}]
"""))], strict=True).ruleset  # fmt: skip
T0 = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)  # Wednesday 10:00 Berlin


def _msg(i: str, direction: str, at: datetime, sender: str = "user") -> Message:
    return Message.model_validate(
        {"_id": i, "conversation_id": 1, "direction": direction, "created_at": at, "sender_type": sender}
    )


def _snap(messages: list[Message], contact: Contact | None = None) -> Snapshot:
    inbound = max((m.created_at for m in messages if m.direction == "inbound"), default=None)
    outbound = max((m.created_at for m in messages if m.direction == "outbound"), default=None)
    conv = Conversation(id=1, channel="webchat", last_inbound_at=inbound, last_outbound_at=outbound)
    return Snapshot(conv, messages, contact)


def _key(snapshot: Snapshot, at: datetime) -> str | None:
    matches = evaluate(RULES, snapshot, at).matches
    return matches[0].firing_key if matches else None


def _due(snapshot: Snapshot, at: datetime) -> datetime | None:
    return evaluate(RULES, snapshot, at).next_due.get("nudge")


def test_the_bots_own_nudge_does_not_restart_the_sequence() -> None:
    talk = [_msg("a", "inbound", T0), _msg("b", "outbound", T0 + timedelta(minutes=5))]
    anchor = T0 + timedelta(minutes=5)
    assert _due(_snap(talk), T0 + timedelta(hours=1)) == anchor + timedelta(hours=24)
    key = _key(_snap(talk), anchor + timedelta(hours=24))
    assert key == f"nudge:1:tr:{anchor.isoformat()}"
    after = [*talk, _msg("n", "outbound", anchor + timedelta(hours=24), sender="api")]
    assert _key(_snap(after), anchor + timedelta(hours=30)) == key  # same situation: fired once


def test_a_person_restarts_and_a_customer_cancels() -> None:
    talk = [_msg("a", "inbound", T0), _msg("b", "outbound", T0 + timedelta(minutes=5))]
    later = T0 + timedelta(hours=3)
    restarted = [*talk, _msg("c", "outbound", later)]
    assert _due(_snap(restarted), later) == later + timedelta(hours=24)
    assert _key(_snap(restarted), later + timedelta(hours=24)) == f"nudge:1:tr:{later.isoformat()}"
    cancelled = [*talk, _msg("d", "inbound", T0 + timedelta(hours=2))]
    assert _due(_snap(cancelled), T0 + timedelta(hours=2)) is None
    assert _key(_snap(cancelled), T0 + timedelta(hours=30)) is None


def test_no_anchor_without_a_team_reply_or_without_messages() -> None:
    assert _key(_snap([_msg("a", "inbound", T0)]), T0 + timedelta(days=3)) is None
    conv = Conversation(id=1, channel="webchat", last_inbound_at=T0, last_outbound_at=T0 + timedelta(hours=1))
    assert _key(Snapshot(conv), T0 + timedelta(days=2)) is None


def _night_talk() -> list[Message]:
    evening = datetime(2026, 3, 4, 21, 30, tzinfo=UTC)  # 22:30 Berlin
    return [_msg("a", "inbound", evening - timedelta(minutes=5)), _msg("b", "outbound", evening)]


def test_quiet_hours_hold_the_nudge_until_the_morning() -> None:
    evening = datetime(2026, 3, 4, 21, 30, tzinfo=UTC)
    snap = _snap(_night_talk())
    assert _due(snap, evening) == datetime(2026, 3, 6, 7, 0, tzinfo=UTC)  # Friday 08:00 Berlin
    assert _key(snap, evening + timedelta(hours=24)) is None


def test_quiet_hours_follow_the_contacts_time_zone() -> None:
    evening = datetime(2026, 3, 4, 21, 30, tzinfo=UTC)  # 13:30 in Los Angeles: not quiet there
    contact: Any = Contact(id=1, timezone="America/Los_Angeles")
    assert _key(_snap(_night_talk(), contact), evening + timedelta(hours=24)) is not None
    odd: Any = Contact(id=1, timezone="Mars/Olympus")  # an unknown zone falls back to the org's
    assert _key(_snap(_night_talk(), odd), evening + timedelta(hours=24)) is None
