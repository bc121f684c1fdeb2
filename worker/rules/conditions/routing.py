"""Conditions about the owner: how long they have held or left unanswered a conversation,
and whether they are still available (the roster's on/off switch and working hours).

The return timer is `owner_unresponsive`; offline agents are `owner_unavailable`.
Both know when they will next change, so the loop sets a due-timer for them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import Field, PrivateAttr

from worker.rules.calendars import Calendar, is_open, next_close, next_open
from worker.rules.conditions.base import CONDITIONS, Condition
from worker.rules.conditions.timing import ElapsedCondition
from worker.rules.context import EvalContext, utc
from worker.rules.durations import Duration, format_duration
from worker.rules.routing import AgentConfig, Roster, last_close

# Rounds of "next closed period" searched for one long enough for the grace period.
MAX_PERIODS = 64
EARLIEST = datetime.min.replace(tzinfo=UTC)


@CONDITIONS.register("assigned_for")
class AssignedForCondition(ElapsedCondition):
    """Time since the conversation was assigned to its current owner."""

    key = "assigned_for"

    def what(self) -> str:
        return "time with the current owner"

    def start(self, ctx: EvalContext) -> datetime | None:
        return utc(ctx.conv.assigned_at) if ctx.conv.owner_id is not None else None


@CONDITIONS.register("owner_unresponsive")
class OwnerUnresponsiveCondition(ElapsedCondition):
    """The owner has not answered the customer this long after the assignment or the
    customer's latest message, whichever came later (the return timer)."""

    key = "owner_unresponsive"

    def what(self) -> str:
        return "owner has not answered"

    def start(self, ctx: EvalContext) -> datetime | None:
        conv = ctx.conv
        inbound, outbound = utc(conv.last_inbound_at), utc(conv.last_outbound_at)
        if conv.owner_id is None or inbound is None or (outbound is not None and outbound >= inbound):
            return None
        assigned = utc(conv.assigned_at)
        return inbound if assigned is None else max(inbound, assigned)


@CONDITIONS.register("owner_unavailable")
class OwnerUnavailableCondition(Condition):
    """The owner is switched off or off shift, for at least `grace` (owners not in the roster
    never match).

    Off shift counts from the end of their shift. A switched-off agent has no
    known switch-off time, so the grace counts from the later of the
    assignment and the customer's latest message.
    """

    key = "owner_unavailable"
    shorthand = "grace"
    time_bound = True
    grace: Duration = Field(default=timedelta(0), description="How long after the shift ends")
    _roster: Roster | None = PrivateAttr(default=None)

    def bind_roster(self, roster: Roster) -> None:
        self._roster = roster

    def label(self) -> str:
        return f"owner off shift or switched off for {format_duration(self.grace)} or more"

    def _agent(self, ctx: EvalContext) -> AgentConfig | None:
        owner = ctx.conv.owner_id
        if owner is None or self._roster is None:
            return None
        return self._roster.agents.get(owner)

    def _off_since(self, agent: AgentConfig, ctx: EvalContext, at: datetime) -> datetime | None:
        """Since when the agent has been unavailable at `at` (None: available)."""
        if not agent.enabled:
            known = [t for t in (utc(ctx.conv.assigned_at), utc(ctx.conv.last_inbound_at)) if t]
            return max(known, default=EARLIEST)
        cal = self._calendar(agent)
        if cal is None or is_open(cal, at):
            return None
        return last_close(cal, at) or EARLIEST

    def _calendar(self, agent: AgentConfig) -> Calendar | None:
        if self._roster is None or agent.calendar is None:
            return None
        return self._roster.calendars.get(agent.calendar)

    def seen(self, ctx: EvalContext) -> object:
        agent = self._agent(ctx)
        if agent is None:
            return "no owner in the roster"
        since = self._off_since(agent, ctx, ctx.now)
        if since is None:
            return f"agent {agent.id} available"
        what = "switched off" if not agent.enabled else f"off shift ({agent.calendar})"
        return f"agent {agent.id} {what} since {since.isoformat() if since > EARLIEST else 'long ago'}"

    def test(self, ctx: EvalContext) -> bool:
        agent = self._agent(ctx)
        if agent is None:
            return False
        since = self._off_since(agent, ctx, ctx.now)
        return since is not None and (since == EARLIEST or ctx.now >= since + self.grace)

    def due(self, ctx: EvalContext, at: datetime, want: bool) -> datetime | None:
        agent = self._agent(ctx)
        if agent is None:
            return None if want else at
        if self.test(ctx.at(at)) == want:
            return at
        cal = self._calendar(agent)
        if not want:  # true now: false again when the agent's shift starts
            return next_open(cal, at) if agent.enabled and cal is not None else None
        if not agent.enabled:
            since = self._off_since(agent, ctx, at)
            return None if since is None else max(at, since + self.grace)
        return self._next_long_closure(cal, at) if cal is not None else None

    def _next_long_closure(self, cal: Calendar, at: datetime) -> datetime | None:
        """The first instant >= at that lies `grace` into a closed period."""
        t = at
        for _ in range(MAX_PERIODS):
            if is_open(cal, t):
                closes = next_close(cal, t)
                if closes is None or closes <= t:
                    return None
                t = closes
                continue
            since = last_close(cal, t) or EARLIEST
            ready = t if since == EARLIEST else max(t, since + self.grace)
            reopens = next_open(cal, t)
            if reopens is None or ready < reopens:
                return ready
            t = reopens
        return None
