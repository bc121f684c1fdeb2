"""Property checkers for the routing bot, over what a run recorded.

Each checker returns a list of violations (human-readable strings); an empty
list means the property held. They work on plain records so any driver can
feed them: bot assignments come from the simulator's audit log
(`bot_assignments`), human changes from the driver's own record of what
people did, loads and waiting lines from the simulator's store after each tick
(`open_loads`, `waiting_unassigned`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from worker.api.models import Conversation
from worker.rules.calendars import is_open
from worker.rules.routing import Roster, waiting_since
from worker.simulator.audit import AuditEntry
from worker.simulator.simulator import Simulator

BULK_PATH = "/conversations-bulk-actions"


@dataclass(frozen=True)
class Assignment:
    """One owner change: by the bot (an applied bulk `assign`) or by a person."""

    at: datetime
    conversation_id: int
    owner_id: int | None
    by: str = "bot"  # "bot" | "human"
    previous_owner: int | None = None


@dataclass
class TickView:
    """After one tick: what the bot assigned in it and who is still waiting unassigned
    (conversation id -> waiting since)."""

    at: datetime
    assigned: dict[int, datetime] = field(default_factory=dict)
    waiting: dict[int, datetime] = field(default_factory=dict)


def bot_assignments(entries: Iterable[AuditEntry]) -> list[Assignment]:
    """Applied bulk `assign` calls, one record per conversation, in order."""
    out = []
    for entry in entries:
        body = entry.body if isinstance(entry.body, dict) else {}
        if (
            entry.applied
            and entry.method == "POST"
            and entry.path == BULK_PATH
            and body.get("action") == "assign"
        ):
            out.extend(
                Assignment(entry.time, int(c), body.get("owner_id")) for c in body.get("conversation_ids", [])
            )
    return out


def open_loads(sim: Simulator) -> dict[int, int]:
    """Open conversations per owner, read from the simulator's store."""
    with sim.lock:
        owners = [c["owner_id"] for c in sim.store.conversations.candidates({}) if c["status"] == "open"]
    return dict(Counter(o for o in owners if o is not None))


def waiting_unassigned(sim: Simulator) -> dict[int, datetime]:
    """Open, unassigned conversations and since when they wait (`waiting_since`)."""
    with sim.lock:
        records = [dict(c) for c in sim.store.conversations.candidates({})]
    out = {}
    for raw in records:
        if raw["status"] == "open" and raw["owner_id"] is None:
            since = waiting_since(Conversation.model_validate(raw))
            if since is not None:
                out[int(raw["id"])] = since
    return out


# --- the properties ------------------------------------------------------------------------


def round_robin_fair(
    assignments: Sequence[Assignment], agents: Iterable[int], tolerance: int = 1
) -> list[str]:
    """Bot assignments per agent differ by at most `tolerance` among `agents` (all eligible)."""
    counts = Counter(a.owner_id for a in assignments if a.by == "bot")
    per_agent = {agent: counts.get(agent, 0) for agent in agents}
    if not per_agent:
        return []
    spread = max(per_agent.values()) - min(per_agent.values())
    return [] if spread <= tolerance else [f"round-robin spread {spread} > {tolerance}: {per_agent}"]


def capacity_kept(samples: Iterable[tuple[datetime, Mapping[int, int]]], roster: Roster) -> list[str]:
    """No agent ever holds more open conversations than their capacity."""
    out = []
    for at, loads in samples:
        for agent_id, load in loads.items():
            agent = roster.agents.get(agent_id)
            if agent is not None and agent.capacity is not None and load > agent.capacity:
                out.append(f"{at.isoformat()}: agent {agent_id} holds {load} > capacity {agent.capacity}")
    return out


def on_shift_only(assignments: Sequence[Assignment], roster: Roster) -> list[str]:
    """Every bot assignment went to an agent switched on and inside their calendar."""
    out = []
    for a in assignments:
        if a.by != "bot" or a.owner_id is None:
            continue
        agent = roster.agents.get(a.owner_id)
        if agent is None or not agent.enabled:
            out.append(
                f"{a.at.isoformat()}: conversation {a.conversation_id} to unavailable agent {a.owner_id}"
            )
            continue
        cal = roster.calendars.get(agent.calendar) if agent.calendar else None
        if cal is not None and not is_open(cal, a.at):
            out.append(f"{a.at.isoformat()}: conversation {a.conversation_id} to {a.owner_id}, off shift")
    return out


def oldest_first(ticks: Iterable[TickView]) -> list[str]:
    """In every tick, nobody assigned waited less than anyone left waiting."""
    out = []
    for tick in ticks:
        if not tick.assigned or not tick.waiting:
            continue
        served, served_since = max(tick.assigned.items(), key=lambda kv: kv[1])
        left, left_since = min(tick.waiting.items(), key=lambda kv: kv[1])
        if served_since > left_since:
            out.append(
                f"{tick.at.isoformat()}: served {served} (waiting since {served_since.isoformat()}) "
                f"before {left} (since {left_since.isoformat()})"
            )
    return out


def human_changes_kept(changes: Sequence[Assignment], *, strict: bool = True) -> list[str]:
    """After a person changes a conversation's owner, the bot never sets it back to the owner
    before that change; with `strict`, the bot does not change that owner at all."""
    out = []
    human_at: dict[int, Assignment] = {}
    for change in sorted(changes, key=lambda c: c.at):
        if change.by == "human":
            human_at[change.conversation_id] = change
            continue
        human = human_at.get(change.conversation_id)
        if human is None:
            continue
        if change.owner_id == human.previous_owner and change.owner_id != human.owner_id:
            out.append(f"{change.at.isoformat()}: bot undid the human's change on {change.conversation_id}")
        elif strict:
            out.append(f"{change.at.isoformat()}: bot moved {change.conversation_id} after a human's change")
    return out
