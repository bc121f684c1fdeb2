"""Routing properties over the whole run, from the merged history.

A sweep over every change in time order keeps each conversation's owner and
status, hence every agent's open load, and checks each bot assignment against
the scenario roster (read from the YAML here, not from the worker's loader).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ruamel.yaml import YAML

from tests.scenarios.hours import Hours
from tests.scenarios.properties import Verdict
from tests.scenarios.timeline import Happening, History, State

if TYPE_CHECKING:
    from tests.scenarios.driver import Lag

GUARD = timedelta(seconds=2)


@dataclass(frozen=True)
class Roster:
    members: tuple[int, ...]  # the round-robin pool, in order
    capacity: dict[int, int]
    calendar: dict[int, str]
    leads: tuple[int, ...]


def load_roster(path: Path, pool: str = "scn-frontline", leads: str = "scn-leads") -> Roster:
    doc: Any = YAML(typ="safe").load(path.read_text())
    agents = {a["id"]: a for a in doc["agents"]}
    return Roster(
        tuple(doc["pools"][pool]["members"]),
        {i: a.get("capacity", 10**9) for i, a in agents.items()},
        {i: a.get("calendar") for i, a in agents.items()},
        tuple(doc["pools"][leads]["members"]),
    )


def check_routing(
    history: History, roster: Roster, hours: dict[str, Hours], lag: Lag | None = None
) -> Verdict:
    v = Verdict("routing")
    states: dict[int, State] = {}
    load: Counter[int] = Counter()
    pointer = 0
    humans: dict[int, int | None] = {}  # conversation -> owner a person moved it away from
    assigned: Counter[int] = Counter()
    skipped_for_capacity = 0
    for h in history.everything:
        if h.kind == "arrive":
            states[h.conversation_id] = history.initial(h.conversation_id)
        state = states.get(h.conversation_id)
        if state is None:
            continue
        if not h.human and h.kind in ("assign", "unassign"):
            _check_not_undone(h, state, humans, roster, v)
        if not h.human and h.kind == "assign" and h.value in roster.members:
            expected, skipped = _round_robin(pointer, roster, load, h, hours)
            skipped_for_capacity += skipped
            if h.value != expected:
                v.violations.append(
                    f"c{h.conversation_id}: round robin gave {h.value}, expected {expected}"
                    f" at {h.at:%a %H:%M:%S}"
                )
            if expected is not None:
                pointer = roster.members.index(expected) + 1
            _check_eligible(h, roster, load, hours, v)
            assigned[h.value] += 1
        if h.human and h.kind == "reassign":
            humans[h.conversation_id] = state.owner
        before = (state.owner, state.status)
        state.apply(h)
        _move_load(load, before, (state.owner, state.status))
    v.counts = {f"agent {a}": assigned[a] for a in roster.members}
    v.expected = sum(assigned.values())
    spread = max(assigned.values(), default=0) - min((assigned[a] for a in roster.members), default=0)
    v.counts["round-robin spread"] = spread
    v.counts["capacity skips"] = skipped_for_capacity
    if skipped_for_capacity == 0 and spread > 1:
        v.violations.append(f"round-robin load differs by {spread} between agents")
    _check_arrivals(history, roster, hours, v, lag)
    return v


def _move_load(load: Counter[int], before: tuple[int | None, str], after: tuple[int | None, str]) -> None:
    if before[0] is not None and before[1] == "open":
        load[before[0]] -= 1
    if after[0] is not None and after[1] == "open":
        load[after[0]] += 1


def _eligible(agent: int, roster: Roster, load: Counter[int], h: Happening, hours: dict[str, Hours]) -> bool:
    cal = roster.calendar.get(agent)
    on_shift = cal is None or hours[cal].is_open(h.at)
    return on_shift and load[agent] < roster.capacity[agent]


def _round_robin(
    pointer: int, roster: Roster, load: Counter[int], h: Happening, hours: dict[str, Hours]
) -> tuple[int | None, int]:
    """The member the pointer says is next, skipping those off shift or full (and how many were full)."""
    n = len(roster.members)
    full = 0
    for i in range(n):
        agent = roster.members[(pointer + i) % n]
        if _eligible(agent, roster, load, h, hours):
            return agent, full
        full += load[agent] >= roster.capacity[agent]
    return None, full


def _check_eligible(
    h: Happening, roster: Roster, load: Counter[int], hours: dict[str, Hours], v: Verdict
) -> None:
    agent = int(h.value)
    cal = roster.calendar.get(agent)
    if cal is not None and not hours[cal].is_open(h.at):
        v.violations.append(f"c{h.conversation_id}: agent {agent} got work off shift at {h.at:%a %H:%M:%S}")
    if load[agent] >= roster.capacity[agent]:
        v.violations.append(f"c{h.conversation_id}: agent {agent} over capacity ({load[agent] + 1})")


def _check_not_undone(
    h: Happening, state: State, humans: dict[int, int | None], roster: Roster, v: Verdict
) -> None:
    """After a person reassigns, the bot may escalate to a lead but never routes it again or back."""
    if h.conversation_id not in humans or not state.human_owner:
        return
    if h.kind == "unassign" or h.value in roster.members or h.value == humans[h.conversation_id]:
        v.violations.append(
            f"c{h.conversation_id}: the bot undid a person's reassignment ({h.kind} {h.value})"
        )


def _check_arrivals(
    history: History, roster: Roster, hours: dict[str, Hours], v: Verdict, lag: Lag | None
) -> None:
    """Every arrival is routed within GUARD (or, while the workers were stopped, GUARD after
    they restarted): to a person in shift, to the AI assistant outside it."""
    for cid, events in history.by_conversation.items():
        if cid not in history.created:
            continue
        start = history.created[cid]
        first = next((h for h in events if not h.human and h.kind in ("assign", "ai")), None)
        in_shift = hours["scn-support"].is_open(start)
        late = first is not None and first.at > (lag.deadline(start, GUARD) if lag else start + GUARD)
        if first is None or late or (first.kind == "assign" and not in_shift):
            v.violations.append(f"c{cid}: arrival at {start:%a %H:%M:%S} not routed within {GUARD}")
        else:
            v.latencies_s.append((first.at - start).total_seconds())
