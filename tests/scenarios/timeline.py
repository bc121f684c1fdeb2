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


START_STAGE = 11  # where the simulator puts a new conversation of pipeline 1
PAUSE_STAGE = 13  # "waiting on customer": the scenario SLA policy's pause stage
Pause = tuple[datetime, datetime | None]  # in the waiting stage: from, until (None: still)


@dataclass(frozen=True)
class Happening:
    """One change to one conversation: by a person (`human`) or by the bot."""

    at: datetime
    seq: int
    human: bool
    kind: str  # arrive customer agent_reply close reassign stage | send assign unassign ai unai status move
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
    zone: str = ""  # the contact's time zone ("" = none)
    stage: int | None = START_STAGE
    pauses: list[Pause] = field(default_factory=list)  # in PAUSE_STAGE
    cycle_start: datetime | None = None  # the first customer message since the last reply
    person_reply: datetime | None = None  # latest reply by a person since the customer's last message
    first_reply: datetime | None = None  # first reply (anyone's) since the customer's last message

    def apply(self, h: Happening) -> None:
        APPLY[h.kind](self, h)

    @property
    def anchor(self) -> datetime | None:
        """The team reply a follow-up sequence counts from (a person's latest, else the first)."""
        return self.person_reply or self.first_reply


def _inbound(s: State, h: Happening) -> None:
    s.last_in, s.status = h.at, "open"
    s.cycle_start = s.cycle_start or h.at
    s.person_reply = s.first_reply = None


def _outbound(s: State, h: Happening, person: bool) -> None:
    s.last_out, s.cycle_start = h.at, None
    s.first_reply = s.first_reply or h.at
    if person:
        s.person_reply = h.at


def _send(s: State, h: Happening) -> None:
    if h.value != "note":
        _outbound(s, h, person=False)


def _stage(s: State, h: Happening) -> None:
    paused = bool(s.pauses) and s.pauses[-1][1] is None
    s.stage = h.value
    if h.value == PAUSE_STAGE and not paused:
        s.pauses.append((h.at, None))
    elif h.value != PAUSE_STAGE and paused:
        s.pauses[-1] = (s.pauses[-1][0], h.at)


def _owner(s: State, h: Happening) -> None:
    s.owner, s.human_owner = h.value, h.human


APPLY = {
    "arrive": _inbound,
    "customer": _inbound,
    "agent_reply": lambda s, h: _outbound(s, h, person=True),
    "send": _send,
    "close": lambda s, h: setattr(s, "status", "closed"),
    "status": lambda s, h: setattr(s, "status", h.value),
    "reassign": _owner,
    "assign": _owner,
    "unassign": lambda s, h: _owner(s, replace(h, value=None)),
    "ai": lambda s, h: setattr(s, "ai", h.value),
    "unai": lambda s, h: setattr(s, "ai", None),
    "move": _stage,
    "stage": _stage,
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
    zones: dict[int, str] = field(default_factory=dict)
    by_conversation: dict[int, list[Happening]] = field(default_factory=lambda: defaultdict(list))
    everything: list[Happening] = field(default_factory=list)

    def initial(self, conversation_id: int) -> State:
        return State(
            self.channels[conversation_id],
            self.created[conversation_id],
            zone=self.zones.get(conversation_id, ""),
        )


def build_history(played: list[Played], audit: list[AuditEntry]) -> History:
    history = History()
    seq = 0
    for p in played:
        if not p.accepted:
            continue
        if p.kind == "arrive":
            history.channels[p.conversation_id] = p.channel
            history.created[p.conversation_id] = p.at
            history.zones[p.conversation_id] = p.zone
        value = p.stage if p.kind == "stage" else p.agent
        history.everything.append(Happening(p.at, seq, True, p.kind, p.conversation_id, value))
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
