"""Routing pools, pure: who gets the next conversation, given loads and a round-robin pointer.

The evaluator leaves `assign: {pool: x}` unresolved; the planner calls
`choose_agent` with the current loads and the pool's pointer (kept in Redis by
`worker.scheduling.router.Router`) and stores `new_pointer` back.

An agent is eligible when they are in the roster, switched on (`enabled`),
below `capacity`, inside their `calendar`, not excluded (the current owner on
a hand-on) and, when the pool matches skills, has a skill the conversation
asks for (its tags and its channel).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worker.api.models import Conversation
from worker.rules.calendars import Calendar, is_open, next_open, open_intervals


class AgentConfig(BaseModel):
    """One agent of the roster."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: int = Field(description="User id in the Conversations API")
    name: str = ""
    capacity: int | None = Field(default=None, ge=0, description="Max open conversations (none: no cap)")
    calendar: str | None = Field(default=None, description="Working hours (none: always on)")
    enabled: bool = Field(default=True, description="The on/off switch: false = gets no new work")
    skills: list[str] = Field(
        default_factory=list, description="Tags or channels this agent handles (pools with skill_match)"
    )


class StageFallback(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    pipeline: int
    stage: int


class FallbackConfig(BaseModel):
    """What happens when nobody in the pool is available."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    ai_assistant: int | None = Field(default=None, description="Hand to this AI assistant")
    stage: StageFallback | None = Field(default=None, description="Move to this queue stage")

    @model_validator(mode="after")
    def _one(self) -> FallbackConfig:
        if (self.ai_assistant is None) == (self.stage is None):
            raise ValueError("give exactly one of 'ai_assistant' or 'stage' (or write fallback: none)")
        return self


class PoolConfig(BaseModel):
    """A named routing pool."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    members: list[int] = Field(default_factory=list, description="Agent ids, in round-robin order")
    skills: list[str] = Field(
        default_factory=list, description="Also every roster agent with one of these skills (roster order)"
    )
    strategy: Literal["round_robin", "least_loaded", "fixed"] = "round_robin"
    skill_match: Literal["off", "prefer", "require"] = Field(
        default="off",
        description="Match the conversation's tags/channel to agents' skills: "
        "prefer (others only when no match is free) or require",
    )
    fallback: FallbackConfig | Literal["none"] = "none"

    @model_validator(mode="after")
    def _someone(self) -> PoolConfig:
        if not self.members and not self.skills:
            raise ValueError("give 'members' (agent ids) and/or 'skills' (agents with those skills)")
        return self


@dataclass(frozen=True)
class Pool:
    name: str
    members: tuple[int, ...]
    strategy: str
    fallback: FallbackConfig | None
    skill_match: str = "off"

    @classmethod
    def from_config(cls, name: str, config: PoolConfig, agents: Mapping[int, AgentConfig]) -> Pool:
        """Members as listed, then agents with one of the pool's skills (roster order)."""
        members = list(config.members)
        wanted = set(config.skills)
        members += [a for a, agent in agents.items() if a not in members and wanted & set(agent.skills)]
        fallback = config.fallback if isinstance(config.fallback, FallbackConfig) else None
        return cls(name, tuple(members), config.strategy, fallback, config.skill_match)


@dataclass(frozen=True)
class Roster:
    agents: Mapping[int, AgentConfig] = field(default_factory=lambda: MappingProxyType({}))
    pools: Mapping[str, Pool] = field(default_factory=lambda: MappingProxyType({}))
    calendars: Mapping[str, Calendar] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Choice:
    """The chosen agent (None: nobody available, apply `fallback`) and why others were skipped."""

    agent_id: int | None
    new_pointer: int
    skipped: tuple[str, ...] = ()
    fallback: FallbackConfig | None = None


def off_shift(agent: AgentConfig, roster: Roster, now: datetime) -> bool:
    cal = roster.calendars.get(agent.calendar) if agent.calendar else None
    return cal is not None and not is_open(cal, now)


def _unavailable(agent: AgentConfig | None, roster: Roster, now: datetime, load: int) -> str | None:
    if agent is None:
        return "not in the roster"
    if not agent.enabled:
        return "switched off"
    if agent.capacity is not None and load >= agent.capacity:
        return f"at capacity ({load}/{agent.capacity})"
    if off_shift(agent, roster, now):
        return f"off shift ({agent.calendar})"
    return None


def skill_needs(pool: Pool, roster: Roster, conversation: Conversation | None) -> frozenset[str]:
    """The conversation's tags and channel that some pool member has as a skill."""
    if pool.skill_match == "off" or conversation is None:
        return frozenset()
    known = {s for m in pool.members if (a := roster.agents.get(m)) for s in a.skills}
    return frozenset({*conversation.tags, conversation.channel} & known)


def choose_agent(
    pool: Pool,
    roster: Roster,
    now: datetime,
    loads: Mapping[int, int],
    rr_pointer: int,
    *,
    conversation: Conversation | None = None,
    exclude: Collection[int] = (),
) -> Choice:
    """Pick an agent by the pool's strategy, skipping those off, full, off shift or excluded.

    With `skill_match`, agents having a skill the conversation asks for come
    first (`prefer`) or are the only candidates (`require`).
    """
    if not pool.members:
        return Choice(None, rr_pointer, ("the pool has no members",), pool.fallback)
    needs = skill_needs(pool, roster, conversation)
    if not needs:
        return _choose(pool, roster, now, loads, rr_pointer, exclude, None)
    choice = _choose(pool, roster, now, loads, rr_pointer, exclude, needs)
    if choice.agent_id is not None or pool.skill_match == "require":
        return choice
    anyone = _choose(pool, roster, now, loads, rr_pointer, exclude, None)
    return Choice(
        anyone.agent_id, anyone.new_pointer, _per_agent(choice.skipped, anyone.skipped), anyone.fallback
    )


def _per_agent(first: tuple[str, ...], then: tuple[str, ...]) -> tuple[str, ...]:
    """One reason per agent: the later pass's ("at capacity") over the skill pass's ("no skill")."""
    reasons = {entry.split(":", 1)[0]: entry for entry in first}
    reasons.update({entry.split(":", 1)[0]: entry for entry in then})
    return tuple(reasons.values())


def _why_not(
    pool: Pool, roster: Roster, agent_id: int, now: datetime, loads: Mapping[int, int],
    exclude: Collection[int], needs: frozenset[str] | None,
) -> str | None:  # fmt: skip
    if agent_id in exclude:
        return "the current owner"
    agent = roster.agents.get(agent_id)
    if needs is not None and agent is not None and not needs & set(agent.skills):
        return f"no skill in {sorted(needs)}"
    return _unavailable(agent, roster, now, loads.get(agent_id, 0))


def _choose(
    pool: Pool, roster: Roster, now: datetime, loads: Mapping[int, int], rr_pointer: int,
    exclude: Collection[int], needs: frozenset[str] | None,
) -> Choice:  # fmt: skip
    n = len(pool.members)
    start = rr_pointer % n if pool.strategy == "round_robin" else 0
    order = [(start + i) % n for i in range(n)]
    skipped: list[str] = []
    eligible: list[int] = []
    for index in order:
        agent_id = pool.members[index]
        why = _why_not(pool, roster, agent_id, now, loads, exclude, needs)
        if why:
            skipped.append(f"agent {agent_id}: {why}")
        else:
            eligible.append(index)
            if pool.strategy != "least_loaded":
                break  # the first eligible member wins; later ones were not skipped
    if not eligible:
        return Choice(None, rr_pointer, tuple(skipped), pool.fallback)
    if pool.strategy == "least_loaded":
        # Ties go to the earlier member, so the choice is deterministic.
        index = min(eligible, key=lambda i: (loads.get(pool.members[i], 0), i))
        return Choice(pool.members[index], rr_pointer, tuple(skipped))
    index = eligible[0]
    pointer = (index + 1) % n if pool.strategy == "round_robin" else rr_pointer
    return Choice(pool.members[index], pointer, tuple(skipped))


# --- waiting order and retry times ---------------------------------------------------------

FAR_FUTURE = datetime.max.replace(tzinfo=UTC)


def waiting_since(conversation: Conversation) -> datetime | None:
    """When the customer started waiting for a person: creation, or their latest message once
    the team has answered before (a reopened conversation waits since it reopened)."""
    start = conversation.created_at if conversation.last_outbound_at is None else None
    start = start or conversation.last_inbound_at or conversation.created_at
    return None if start is None else (start if start.tzinfo else start.replace(tzinfo=UTC))


def waiting_order(conversation: Conversation | None) -> tuple[datetime, int]:
    """Sort key for "oldest waiting first" (unknown times last, then by id)."""
    if conversation is None:
        return FAR_FUTURE, 0
    return waiting_since(conversation) or FAR_FUTURE, conversation.id


def next_shift_start(pool: Pool, roster: Roster, now: datetime) -> datetime | None:
    """The earliest time an enabled member who is off shift now comes on shift."""
    starts = []
    for member in pool.members:
        agent = roster.agents.get(member)
        cal = roster.calendars.get(agent.calendar) if agent and agent.calendar else None
        if agent is None or not agent.enabled or cal is None or is_open(cal, now):
            continue
        start = next_open(cal, now)
        if start is not None:
            starts.append(start)
    return min(starts, default=None)


def retry_at(pool: Pool, roster: Roster, now: datetime, every: timedelta) -> datetime:
    """When to try a pool again after nobody was free: the next shift start when nobody
    is on shift (nothing else can free a place), else the earlier of that and `every`."""
    start = next_shift_start(pool, roster, now)
    on_shift = any(
        (agent := roster.agents.get(m)) is not None and agent.enabled and not off_shift(agent, roster, now)
        for m in pool.members
    )
    if start is not None and not on_shift:
        return start
    later = now + every
    return later if start is None else min(start, later)


def last_close(cal: Calendar, now: datetime, lookback: timedelta = timedelta(days=8)) -> datetime | None:
    """When the calendar last closed before `now` (None: closed for the whole lookback)."""
    closed: datetime | None = None
    for s, e in open_intervals(cal, now - lookback, until=now):
        if s > now:
            break
        if e <= now:
            closed = e if closed is None or e > closed else closed
    return closed
