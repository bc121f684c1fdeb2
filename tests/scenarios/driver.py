"""Play generated traffic through the simulator with the real loop on a fake clock.

The loop is the production one (`Loop.poll_once`, `pump_once`, `resync_once`,
`redrive_once`, ledger claims, due-timers in Redis, the Router's round-robin
pointer in Redis). Claimed steps are executed inline with
`worker.execution.execute.execute` right after each tick instead of through a dramatiq
worker: the broker's worker threads, delays and retries run on wall time, so
with a fake clock jumping hours at a time the interleaving of actor runs and
ticks would depend on thread scheduling; inline execution keeps a seed's run
reproducible bit for bit. The actors are thin wrappers around the same
`execute` (tests/test_actors.py covers them on a real broker).

Time moves like the scheduler's 1-second tick: to each person's event exactly
(the simulator stamps it then), then whole-second ticks while anything is
happening, and a jump to the next event, due-timer or resync when all is quiet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from tests.e2e._exec_helpers import flush_redis
from tests.scenarios.traffic import Event
from tests.support.dispatchers import Collector
from worker.config import load_settings
from worker.execution.execute import execute
from worker.rules.book import Rulebook
from worker.rules.firing import Step
from worker.rules.loader import load_rules
from worker.runtime import Runtime
from worker.scheduling.tick import Loop
from worker.simulator.errors import FeathersError
from worker.simulator.testing import SimulatorHandle
from worker.state.lease import LeaderLease

TICK = timedelta(seconds=1)
RESYNC_EVERY = timedelta(hours=6)
HUMAN_AGENT = 101


@dataclass(frozen=True)
class Played:
    """A person's event as the simulator took it (`accepted` False: refused, e.g. the 24-h window)."""

    at: datetime
    kind: str
    conversation_id: int
    accepted: bool
    channel: str = ""
    agent: int | None = None
    previous_owner: int | None = None
    note: str = ""
    zone: str = ""  # the contact's time zone (arrivals)
    stage: int | None = None  # the stage a person moved it to ("stage")


@dataclass
class RunResult:
    start: datetime
    end: datetime
    played: list[Played] = field(default_factory=list)
    steps: int = 0
    ticks: int = 0
    polls_with_changes: int = 0
    resyncs: int = 0
    execution_errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    conversation_ids: dict[int, int] = field(default_factory=dict)  # generator ref -> id
    lag: Lag | None = None  # the workers were stopped then (the scheduler kept claiming)
    lagged_steps: int = 0  # steps queued while they were stopped


@dataclass(frozen=True)
class Lag:
    """Workers stopped at `start` and restarted at `end`: what they would have run waits."""

    start: datetime
    end: datetime

    def covers(self, t: datetime) -> bool:
        return self.start <= t < self.end

    def deadline(self, due: datetime, guard: timedelta) -> datetime:
        """The latest an effect due at `due` may land: restarted workers first run the backlog."""
        return self.end + guard if self.covers(due) else due + guard


def build_runtime(handle: SimulatorHandle, redis_url: str, rule_files: list[Path]) -> Runtime:
    """A production-built runtime on the simulator and its clock, on an emptied Redis."""
    flush_redis(redis_url)  # the ledger, timers, watermark and pointers of an earlier run
    ruleset = load_rules(rule_files, strict=True).ruleset
    settings = load_settings(
        api_url=handle.url,
        api_token=handle.token,
        redis_url=redis_url,
        rate_limit_per_s=100_000,
        rate_burst=100_000,
    )
    return Runtime.build(settings, clock=handle.clock, rulebook=Rulebook.of(ruleset))


class Driver:
    def __init__(self, handle: SimulatorHandle, runtime: Runtime, lag: Lag | None = None) -> None:
        self.handle = handle
        self.sim = handle.sim
        self.clock = handle.clock
        self.runtime = runtime
        self.collect = Collector()
        self.loop = Loop(runtime, self.collect)
        self.lease = LeaderLease(runtime.redis, "scheduler", 3600, self.clock)
        self.loop.fencing_token = lambda: self.lease.token
        self.lag = lag
        self.backlog: list[Step] = []  # queued while the workers are stopped

    # --- people ------------------------------------------------------------------------------

    def play(self, event: Event, result: RunResult) -> None:
        ids = result.conversation_ids
        if event.kind == "arrive":
            contact = {"timezone": event.zone} if event.zone else {}
            record = self.sim.new_conversation(channel=event.channel, text="Hi, I need help", contact=contact)
            ids[event.ref] = record["id"]
            result.played.append(
                Played(event.at, "arrive", record["id"], True, event.channel, zone=event.zone)
            )
            return
        conversation_id = ids.get(event.ref)
        if conversation_id is None:
            return
        current = self.sim.conversation(conversation_id)
        accepted, note, previous = True, "", current["owner_id"]
        try:
            if event.kind == "customer":
                self.sim.customer_message(conversation_id, "One more thing")
            elif event.kind == "agent_reply":
                owner = current["owner_id"] or HUMAN_AGENT
                self.sim.team_reply(conversation_id, "Here is the answer.", user_id=owner)
            elif event.kind == "close":
                self.sim.human_change(conversation_id, {"status": "closed"})
            elif event.kind == "reassign":
                self.sim.reassign(conversation_id, event.agent)
            elif event.kind == "stage":
                self.sim.human_change(conversation_id, {"pipeline_stage_id": event.stage})
        except FeathersError as exc:  # the API refused it (a closed 24-hour window)
            accepted, note = False, type(exc).__name__
        result.played.append(
            Played(event.at, event.kind, conversation_id, accepted, current["channel"], event.agent,
                   previous, note, stage=event.stage)
        )  # fmt: skip

    # --- the worker ----------------------------------------------------------------------------

    def tick(self, result: RunResult, resync: bool) -> bool:
        """One scheduler tick; True when anything happened (so the next second is ticked too)."""
        self.lease.try_acquire()
        busy = False
        reports = [self.loop.poll_once(), self.loop.pump_once()]
        if resync:
            reports.append(self.loop.resync_once())
            result.resyncs += 1
        self.loop.redrive_once()
        busy = reports[0].conversations > 0 or any(r.steps for r in reports)
        result.polls_with_changes += reports[0].conversations > 0
        steps, self.collect.steps = self.collect.steps, []
        if self.lag is not None and self.lag.covers(self.clock.now()):
            self.backlog.extend(steps)  # the workers are stopped: the queue only grows
            result.lagged_steps += len(steps)
            steps = []
        else:
            steps, self.backlog = self.backlog + steps, []
        done = 0
        while steps:  # a firing's next action is queued when the one before it is applied
            step = steps.pop(0)
            done += 1
            try:
                execute(self.runtime, step, steps.append)
            except (
                Exception
            ) as exc:  # recorded in the result (the test asserts none); the ledger re-drives it
                result.execution_errors.append(f"{step.kind}: {type(exc).__name__}: {exc}"[:200])
        result.steps += done
        result.ticks += 1
        return busy or bool(done)

    def run(self, events: list[Event], start: datetime, end: datetime) -> RunResult:
        began = time.perf_counter()
        result = RunResult(start, end, lag=self.lag)
        self.clock.set(start)
        index = 0
        next_tick: datetime | None = start
        next_resync = start
        while True:
            tick_at = self._tick_at(next_tick, next_resync)
            wake = max(min(tick_at, events[index].at) if index < len(events) else tick_at, self.clock.now())
            if wake >= end:
                break
            self.clock.set(wake)
            if index < len(events) and events[index].at <= wake:
                while index < len(events) and events[index].at <= wake:
                    self.play(events[index], result)
                    index += 1
                next_tick = min(next_tick or end, _ceil(wake))
                continue
            resync = wake >= next_resync
            if resync:
                next_resync = wake + RESYNC_EVERY
            busy = self.tick(result, resync)
            next_tick = wake + TICK if busy else None
        result.wall_s = time.perf_counter() - began
        return result

    def _tick_at(self, next_tick: datetime | None, next_resync: datetime) -> datetime:
        """The next scheduler tick: after activity, at a due-timer, or at the resync."""
        candidates = [next_resync]
        if next_tick is not None:
            candidates.append(next_tick)
        due = self.runtime.timers.next_due()
        if due is not None:
            candidates.append(_ceil(due))
        if self.lag is not None and self.clock.now() < self.lag.end:
            candidates.append(self.lag.end)  # the workers restart: run what queued up
        return min(candidates)


def _ceil(t: datetime) -> datetime:
    """`t` rounded up to a whole second (the scheduler ticks every second)."""
    whole = t.replace(microsecond=0)
    return whole if whole == t else whole + TICK
