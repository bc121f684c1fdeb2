"""Routing pools, pure: who gets the next conversation, given loads and a round-robin pointer.

The evaluator leaves `assign: {pool: x}` unresolved; the planner calls
`choose_agent` with the current loads and the pool's pointer (kept in Redis by
the loop) and stores `new_pointer` back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worker.rules.calendars import Calendar, is_open


class AgentConfig(BaseModel):
    """One agent of the roster."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: int = Field(description="User id in the Conversations API")
    name: str = ""
    capacity: int | None = Field(default=None, ge=0, description="Max open conversations (none: no cap)")
    calendar: str | None = Field(default=None, description="Working hours (none: always on)")
    enabled: bool = True
    skills: list[str] = Field(default_factory=list)


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

    members: list[int] = Field(min_length=1, description="Agent ids, in round-robin order")
    strategy: Literal["round_robin", "least_loaded", "fixed"] = "round_robin"
    fallback: FallbackConfig | Literal["none"] = "none"


@dataclass(frozen=True)
class Pool:
    name: str
    members: tuple[int, ...]
    strategy: str
    fallback: FallbackConfig | None


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


def _unavailable(agent: AgentConfig | None, roster: Roster, now: datetime, load: int) -> str | None:
    if agent is None:
        return "not in the roster"
    if not agent.enabled:
        return "switched off"
    if agent.capacity is not None and load >= agent.capacity:
        return f"at capacity ({load}/{agent.capacity})"
    cal = roster.calendars.get(agent.calendar) if agent.calendar else None
    if cal is not None and not is_open(cal, now):
        return f"off shift ({agent.calendar})"
    return None


def choose_agent(
    pool: Pool, roster: Roster, now: datetime, loads: Mapping[int, int], rr_pointer: int
) -> Choice:
    """Pick an agent by the pool's strategy, skipping those off, full or off shift."""
    n = len(pool.members)
    start = rr_pointer % n if pool.strategy == "round_robin" else 0
    order = [(start + i) % n for i in range(n)]
    skipped: list[str] = []
    eligible: list[int] = []
    for index in order:
        agent_id = pool.members[index]
        why = _unavailable(roster.agents.get(agent_id), roster, now, loads.get(agent_id, 0))
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
