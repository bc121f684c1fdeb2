"""What a firing is: its key, the situations `once` names, and the planned steps that carry it.

The one home of these notions; everything else builds and parses keys here.

A **firing** is one rule answering one situation of one conversation. Its key is
``f"{rule_id}:{conversation_id}:{situation}"``, where the situation comes from the
rule's `once`:

- ``per_conversation``    -> ``c``
- ``per_inbound_message`` -> ``in:<last_inbound_at, UTC ISO 8601>`` (or ``in:msg:<id>`` of the
  last inbound message when the record has no `last_inbound_at` but messages are loaded)
- ``per_stage_entry``     -> ``st:<pipeline_stage_id>:<stage_entered_at ISO>``
- ``per_assignment``      -> ``as:<owner_id>:<assigned_at ISO>``
- ``per_response_cycle``  -> ``cy:<start of the open response cycle ISO>`` (`worker/rules/cycles.py`)
- ``per_team_reply``      -> ``tr:<follow-up anchor ISO>`` (`worker/rules/cycles.py`)

A missing value is written ``none``. Each situation also says when it *started*
(API time): a message answering it was created at or after that instant, which
is what the executor's read-back looks for.

An **item** is one action of a firing, keyed ``<firing key>#<action index>``: the
unit the ledger tracks. A **step** is one queued message: a bulk change over up to
50 items, or one per-conversation action.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, get_args

from worker.api.models import Conversation
from worker.rules.actions import Action
from worker.rules.context import EvalContext, iso
from worker.rules.cycles import followup_anchor, response_cycle_start
from worker.rules.model import Once

ITEM_SEPARATOR = "#"


@dataclass(frozen=True)
class Situation:
    """One `once` value: the situation's key part and when the situation started."""

    key: Callable[[Conversation, EvalContext], str]
    start: Callable[[Conversation], datetime | None]


def _inbound_key(c: Conversation, ctx: EvalContext) -> str:
    if c.last_inbound_at is None and ctx.messages is not None:
        last = ctx.last_inbound_message()
        return f"in:msg:{last.id}" if last is not None else "in:none"
    return f"in:{iso(c.last_inbound_at)}"


def _assign_key(c: Conversation, _: EvalContext) -> str:
    owner = "none" if c.owner_id is None else c.owner_id
    return f"as:{owner}:{iso(c.assigned_at)}"


SITUATIONS: dict[Once, Situation] = {
    "per_conversation": Situation(lambda c, _: "c", lambda c: None),
    "per_inbound_message": Situation(_inbound_key, lambda c: c.last_inbound_at),
    "per_stage_entry": Situation(
        lambda c, _: f"st:{c.pipeline_stage_id}:{iso(c.stage_entered_at)}", lambda c: c.stage_entered_at
    ),
    "per_assignment": Situation(_assign_key, lambda c: c.assigned_at),
    # Both start at the team's last reply: a response cycle opens after it; a follow-up
    # step is sent after the reply that anchors it, while an earlier sequence's identical
    # nudge lies before it (worker/rules/cycles.py).
    "per_response_cycle": Situation(
        lambda _, ctx: f"cy:{iso(response_cycle_start(ctx))}", lambda c: c.last_outbound_at
    ),
    "per_team_reply": Situation(
        lambda _, ctx: f"tr:{iso(followup_anchor(ctx))}", lambda c: c.last_outbound_at
    ),
}


def situation_reads_messages(once: Once, conversation: Conversation) -> bool:
    """Whether the situation's key reads the snapshot's messages for this conversation (a
    rule whose key does needs them whenever it can match)."""
    if once == "per_inbound_message":
        return conversation.last_inbound_at is None
    return once in ("per_response_cycle", "per_team_reply")


def check_situations(situations: Mapping[Once, Situation]) -> None:
    """Every `once` value must say what its situation is and when it starts (checked at import)."""
    missing = set(get_args(Once)) ^ set(situations)
    if missing:
        raise RuntimeError(f"firing situations out of step with Once: {sorted(missing)}")
    for once, situation in situations.items():
        if not (callable(situation.key) and callable(situation.start)):
            raise RuntimeError(f"situation {once!r} lacks its key or its start time")


check_situations(SITUATIONS)


def firing_key(rule_id: str, conversation_id: int | str, situation: str) -> str:
    """The canonical firing key for a rule, a conversation and the situation it answers."""
    return f"{rule_id}:{conversation_id}:{situation}"


def firing_key_for(rule_id: str, once: Once, ctx: EvalContext) -> str:
    """The key of the firing `rule_id` would make on `ctx`'s conversation now."""
    return firing_key(rule_id, ctx.conv.id, SITUATIONS[once].key(ctx.conv, ctx))


def situation_start(once: Once, conversation: Conversation) -> datetime | None:
    return SITUATIONS[once].start(conversation)


def split_firing_key(key: str) -> tuple[str, str]:
    """(rule_id, conversation_id) of a firing or item key; empty strings when it has no such parts."""
    parts = key.split(":", 2)
    if len(parts) < 2:
        return key, ""
    return parts[0], parts[1]


def item_key(firing: str, index: int) -> str:
    """The ledger key of action `index` of a firing."""
    return f"{firing}{ITEM_SEPARATOR}{index}"


def firing_of(key: str) -> str:
    """The firing key of an item key (an item key without its `#<action index>`)."""
    return key.rsplit(ITEM_SEPARATOR, 1)[0]


def action_index(key: str) -> int:
    """The action index of an item key (0 for a key without one)."""
    _, separator, index = key.rpartition(ITEM_SEPARATOR)
    return int(index) if separator and index.isdigit() else 0


def situation_of(key: str) -> str:
    """The situation part of a firing or item key (what follows rule and conversation)."""
    parts = firing_of(key).split(":", 2)
    return parts[2] if len(parts) == 3 else firing_of(key)


def item_index(key: str) -> int:
    """The action position of an item key (0 for a key without one)."""
    _, sep, tail = key.rpartition(ITEM_SEPARATOR)
    return int(tail) if sep and tail.isdigit() else 0


# Action types whose effect starts a new situation of a `once` (the owner or the stage changes).
RENEWING: dict[str, frozenset[str]] = {
    "per_assignment": frozenset({"assign", "unassign"}),
    "per_stage_entry": frozenset({"move"}),
}


def renews(action: Action, once: Once) -> bool:
    """True when carrying out `action` starts a new `once` situation for the same rule."""
    return action.key in RENEWING.get(once, frozenset())


def sibling_keys(key: str, actions: int) -> list[str]:
    """The item keys of the other actions of the firing `key` belongs to."""
    firing = firing_of(key)
    return [k for k in (item_key(firing, i) for i in range(actions)) if k != key]


# --- planned work -----------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One action of one firing on one conversation: the unit the ledger tracks."""

    key: str
    rule_id: str
    conversation_id: int

    @property
    def firing_key(self) -> str:
        return firing_of(self.key)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "rule_id": self.rule_id, "conversation_id": self.conversation_id}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Item:
        return cls(str(data["key"]), str(data["rule_id"]), int(data["conversation_id"]))


@dataclass(frozen=True)
class BulkChange:
    """A bulk action and its fields, e.g. ("assign", {"owner_id": 7})."""

    action: str
    fields: tuple[tuple[str, Any], ...] = ()

    def as_fields(self) -> dict[str, Any]:
        return dict(self.fields)


@dataclass(frozen=True)
class Step:
    """One queued message: a bulk change over up to 50 items, or one per-conversation action."""

    kind: str  # "bulk" | "message" | "automation"
    items: tuple[Item, ...]
    bulk: BulkChange | None = None
    action: Mapping[str, Any] = field(default_factory=dict)  # the rule action, as data

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "items": [i.to_dict() for i in self.items],
            "bulk": None
            if self.bulk is None
            else {"action": self.bulk.action, "fields": dict(self.bulk.fields)},
            "action": dict(self.action),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        bulk = data.get("bulk")
        change = None if not bulk else BulkChange(bulk["action"], tuple(sorted(bulk["fields"].items())))
        items = tuple(Item.from_dict(i) for i in data["items"])
        return cls(str(data["kind"]), items, change, dict(data.get("action") or {}))

    def single(self, item: Item) -> Step:
        """This step narrowed to one item (what the ledger stores for a re-drive)."""
        return Step(self.kind, (item,), self.bulk, self.action)


def group_steps(steps: Iterable[Step], size: int) -> list[Step]:
    """Single-item steps regrouped for the queue: one bulk step per change and up to `size`
    items (the API's bulk limit), per-conversation steps as they are, first seen first."""
    groups: dict[BulkChange, list[Item]] = {}
    out: list[Step] = []
    for step in steps:
        if step.kind == "bulk" and step.bulk is not None:
            groups.setdefault(step.bulk, []).extend(step.items)
        else:
            out.append(step)
    for change, items in groups.items():
        out.extend(
            Step("bulk", tuple(items[start : start + size]), bulk=change)
            for start in range(0, len(items), size)
        )
    return out
