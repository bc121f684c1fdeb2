"""The run's history per conversation: people's events (the driver's record) merged
with the bot's effects (the simulator's audit log of applied calls)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from tests.scenarios.driver import Played
from worker.simulator.audit import AuditEntry

BULK = "/conversations-bulk-actions"
SENDS = ("/conversation-messages-transform-outgoing-", "/conversation-messages-sms")


@dataclass(frozen=True)
class Happening:
    """One change to one conversation: by a person (`human`) or by the bot."""

    at: datetime
    seq: int
    human: bool
    kind: str  # arrive customer agent_reply close reassign | send note assign unassign ai unai status move
    conversation_id: int
    value: Any = None  # owner id, status, message type...
    text: str = ""


@dataclass
class State:
    """What the rules can see of a conversation at one moment."""

    channel: str
    created: datetime
    status: str = "open"
    owner: int | None = None
    ai: int | None = None
    last_in: datetime | None = None
    last_out: datetime | None = None
    human_owner: bool = False  # the current owner was set by a person

    def apply(self, h: Happening) -> None:
        APPLY[h.kind](self, h)


def _arrive(s: State, h: Happening) -> None:
    s.last_in = h.at


def _customer(s: State, h: Happening) -> None:
    s.last_in, s.status = h.at, "open"


def _reply(s: State, h: Happening) -> None:
    s.last_out = h.at


def _send(s: State, h: Happening) -> None:
    if h.value != "note":
        s.last_out = h.at


def _owner(s: State, h: Happening) -> None:
    s.owner, s.human_owner = h.value, h.human


APPLY = {
    "arrive": _arrive,
    "customer": _customer,
    "agent_reply": _reply,
    "send": _send,
    "close": lambda s, h: setattr(s, "status", "closed"),
    "status": lambda s, h: setattr(s, "status", h.value),
    "reassign": _owner,
    "assign": _owner,
    "unassign": lambda s, h: _owner(s, replace(h, value=None)),
    "ai": lambda s, h: setattr(s, "ai", h.value),
    "unai": lambda s, h: setattr(s, "ai", None),
    "move": lambda s, h: None,
}
BULK_KINDS = {
    "assign": ("assign", "owner_id"),
    "unassign": ("unassign", None),
    "assign_ai_assistant": ("ai", "ai_assistant_id"),
    "unassign_ai_assistant": ("unai", None),
    "update_status": ("status", "status"),
    "move": ("move", "pipeline_stage_id"),
}


@dataclass
class History:
    channels: dict[int, str] = field(default_factory=dict)
    created: dict[int, datetime] = field(default_factory=dict)
    by_conversation: dict[int, list[Happening]] = field(default_factory=lambda: defaultdict(list))
    everything: list[Happening] = field(default_factory=list)

    def initial(self, conversation_id: int) -> State:
        return State(self.channels[conversation_id], self.created[conversation_id])


def build_history(played: list[Played], audit: list[AuditEntry]) -> History:
    history = History()
    seq = 0
    for p in played:
        if not p.accepted:
            continue
        if p.kind == "arrive":
            history.channels[p.conversation_id] = p.channel
            history.created[p.conversation_id] = p.at
        history.everything.append(Happening(p.at, seq, True, p.kind, p.conversation_id, p.agent))
        seq += 1
    for entry in audit:
        if not entry.applied or entry.method != "POST":
            continue
        for h in _bot_happenings(entry, seq):
            history.everything.append(h)
        seq += 1
    # In one instant: people first, then the bot's changes oldest conversation first (the
    # order a batch was planned in; a batch is split into one bulk call per agent).
    history.everything.sort(key=lambda h: (h.at, not h.human, h.seq if h.human else h.conversation_id))
    for h in history.everything:
        history.by_conversation[h.conversation_id].append(h)
    return history


def _bot_happenings(entry: AuditEntry, seq: int) -> list[Happening]:
    body = entry.body if isinstance(entry.body, dict) else {}
    if entry.path == BULK:
        kind, fld = BULK_KINDS[str(body["action"])]
        value = body.get(fld) if fld else None
        # Ordered by id: the planner assigns a batch oldest first.
        return [
            Happening(entry.time, seq, False, kind, int(c), value)
            for c in sorted(body.get("conversation_ids", []))
        ]
    if entry.path.startswith(SENDS):
        text = str(body.get("message_text") or "")
        kind_value = str(body.get("message_type") or "text")
        return [Happening(entry.time, seq, False, "send", int(body["conversation_id"]), kind_value, text)]
    return []
