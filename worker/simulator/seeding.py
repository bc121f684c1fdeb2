"""Deterministic sample data: the same (n, seed, now) always gives the same records.

Conversations spread over the past `SPREAD_DAYS` days before the clock's now,
across channels, statuses (mostly open), pipelines and stages, owners (users
101..110 or none), AI assistants and tags, each with a contact and 1-4
messages whose times agree with the conversation's timestamps.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from worker.simulator.store import AI_ASSISTANTS, PIPELINES, USERS

SPREAD_DAYS = 14
CHANNEL_WEIGHTS = {
    "whatsapp": 35,
    "instagram": 15,
    "messenger": 15,
    "webchat": 20,
    "sms": 10,
    "playground": 5,
}
TAGS = ("vip", "billing", "support", "sales", "urgent", "returning")
FIRST_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lea")
LAST_NAMES = ("Silva", "Okafor", "Novak", "Kim", "Haddad", "Berg", "Rossi", "Tanaka", "Weber", "Diaz")
TIMEZONES = ("Europe/Lisbon", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC")
INBOUND_TEXTS = (
    "Hi, where is my order?",
    "Can I change my delivery address?",
    "Do you have this in blue?",
    "I was charged twice this month.",
    "Thanks!",
    "Is anyone there?",
)
OUTBOUND_TEXTS = (
    "Hello! Let me check that for you.",
    "Your order ships tomorrow.",
    "Could you send me your order number?",
    "Done, anything else?",
)
PREDEFINED = (
    ("Greeting", "Hi! Thanks for reaching out, we'll be right with you."),
    ("Out of hours", "We're closed now and will answer first thing tomorrow."),
    ("Follow-up", "Just checking in: is there anything else we can help with?"),
)

Rec = dict[str, Any]
T = TypeVar("T")


# Seeding 100k conversations calls the RNG millions of times; `random()` arithmetic is
# several times cheaper than `choice`/`randrange` and just as deterministic.
def _below(rng: random.Random, n: int) -> int:
    return int(rng.random() * n)


def _pick(rng: random.Random, items: Sequence[T]) -> T:
    return items[int(rng.random() * len(items))]


@dataclass
class SeedData:
    conversations: list[Rec] = field(default_factory=list)
    contacts: list[Rec] = field(default_factory=list)
    messages: list[Rec] = field(default_factory=list)
    predefined: list[Rec] = field(default_factory=list)


def generate(n: int, *, seed: int, now: datetime, organization_id: int) -> SeedData:
    """N conversations (ids 1..n), their contacts (ids 1..n) and messages."""
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)
    object_ids = itertools.count(1)
    data = SeedData()
    channels = [name for name, weight in CHANNEL_WEIGHTS.items() for _ in range(weight)]
    for conversation_id in range(1, n + 1):
        channel = _pick(rng, channels)
        _one(rng, conversation_id, channel, now, organization_id, object_ids, data)
    for index, (title, text) in enumerate(PREDEFINED, start=1):
        data.predefined.append(
            {"id": index, "organization_id": organization_id, "title": title, "message_text": text}
            | {"created_at": now, "updated_at": now}
        )
    return data


def _one(
    rng: random.Random,
    conversation_id: int,
    channel: str,
    now: datetime,
    organization_id: int,
    object_ids: itertools.count[int],
    data: SeedData,
) -> None:
    created = now - timedelta(milliseconds=60_000 + _below(rng, SPREAD_DAYS * 86_400_000 - 60_000))
    initiated_by = "team" if rng.random() < 0.15 else "customer"
    messages = _messages(rng, conversation_id, channel, created, now, initiated_by, object_ids)
    for message in messages:
        message["organization_id"] = organization_id
    data.messages.extend(messages)
    data.contacts.append(_contact(rng, conversation_id, organization_id, created))
    data.conversations.append(
        _conversation(rng, conversation_id, channel, organization_id, created, initiated_by, messages)
    )


def _messages(
    rng: random.Random,
    conversation_id: int,
    channel: str,
    created: datetime,
    now: datetime,
    initiated_by: str,
    object_ids: itertools.count[int],
) -> list[Rec]:
    span_ms = int((now - created).total_seconds() * 1000)
    count = 1 + _below(rng, 4)
    offsets = [0, *sorted(_below(rng, span_ms) for _ in range(count - 1))]
    direction = "inbound" if initiated_by == "customer" else "outbound"
    messages = []
    for offset in offsets:
        at = created + timedelta(milliseconds=offset)
        texts = INBOUND_TEXTS if direction == "inbound" else OUTBOUND_TEXTS
        messages.append(
            {
                "_id": f"{next(object_ids):024x}",
                "conversation_id": conversation_id,
                "channel": channel,
                "direction": direction,
                "message_type": "text",
                "message_text": _pick(rng, texts),
                "sender_type": "contact" if direction == "inbound" else "user",
                "created_at": at,
                "updated_at": at,
            }
        )
        if rng.random() < 0.7:
            direction = "outbound" if direction == "inbound" else "inbound"
    return messages


def _conversation(
    rng: random.Random,
    conversation_id: int,
    channel: str,
    organization_id: int,
    created: datetime,
    initiated_by: str,
    messages: list[Rec],
) -> Rec:
    last_message_at = messages[-1]["created_at"]
    pipeline_id = 1 if rng.random() < 0.7 else 2
    owner_id = None if rng.random() < 0.35 else _pick(rng, USERS)
    trailing_inbound = len(list(itertools.takewhile(lambda m: m["direction"] == "inbound", messages[::-1])))
    return {
        "id": conversation_id,
        "organization_id": organization_id,
        "channel": channel,
        "status": "closed" if rng.random() < 0.2 else "open",
        "owner_id": owner_id,
        "ai_assistant_id": _pick(rng, AI_ASSISTANTS) if rng.random() < 0.1 else None,
        "pipeline_id": pipeline_id,
        "pipeline_stage_id": _pick(rng, PIPELINES[pipeline_id]),
        "contact_id": conversation_id,
        "created_at": created,
        "updated_at": last_message_at,
        "last_message_at": last_message_at,
        "last_inbound_at": _last(messages, "inbound"),
        "last_outbound_at": _last(messages, "outbound"),
        "unread_count": trailing_inbound,
        "tags": _tags(rng),
        "stage_entered_at": _between(rng, created, last_message_at),
        "assigned_at": _between(rng, created, last_message_at) if owner_id is not None else None,
        "initiated_by": initiated_by,
    }


def _tags(rng: random.Random) -> list[str]:
    """0, 1 or 2 distinct tags (0 and 1 twice as likely as 2)."""
    count = _pick(rng, (0, 0, 1, 1, 2))
    first = _below(rng, len(TAGS))
    if count == 0:
        return []
    if count == 1:
        return [TAGS[first]]
    second = (first + 1 + _below(rng, len(TAGS) - 1)) % len(TAGS)
    return [TAGS[first], TAGS[second]]


def _last(messages: list[Rec], direction: str) -> datetime | None:
    times = [m["created_at"] for m in messages if m["direction"] == direction]
    return times[-1] if times else None


def _between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    span_ms = int((end - start).total_seconds() * 1000)
    return start + timedelta(milliseconds=_below(rng, span_ms + 1))


def _contact(rng: random.Random, contact_id: int, organization_id: int, created: datetime) -> Rec:
    first, last = _pick(rng, FIRST_NAMES), _pick(rng, LAST_NAMES)
    return {
        "id": contact_id,
        "organization_id": organization_id,
        "name": f"{first} {last}",
        "phone": f"+3519{contact_id:08d}",
        "email": f"{first.lower()}.{last.lower()}.{contact_id}@example.com",
        "timezone": _pick(rng, TIMEZONES),
        "created_at": created,
        "updated_at": created,
    }
