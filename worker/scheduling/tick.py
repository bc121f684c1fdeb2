"""The loop: changed conversations -> snapshots -> rule matches -> claimed steps -> queue.

`Loop` is what the scheduler's jobs call (`poll_once`, `pump_once`,
`resync_once`, `redrive_once`); tests call the same methods with a fake clock.
Every firing is claimed in the ledger *before* it is enqueued, so overlapping
ticks, resyncs and replicas cannot enqueue it twice; a claim whose message is
lost is re-driven from the ledger.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from worker.api.models import Conversation
from worker.api.services import CONVERSATIONS, MAX_BULK_IDS
from worker.logs import get_logger
from worker.metrics import (
    CONVERSATIONS_EVALUATED,
    POLL_LAG_S,
    POLLS,
    RULE_MATCHES,
    TIMER_BACKLOG,
    TIMER_LATENESS_S,
    UNREAD_OLDEST_S,
    UNREAD_S,
)
from worker.rules.evaluator import Evaluation, Match, evaluate
from worker.rules.firing import Step, item_key
from worker.runtime import Runtime
from worker.scheduling.planning import (
    PlanContext,
    PlannedFiring,
    all_steps,
    first_steps,
    plan,
    pools_asked,
)
from worker.scheduling.poller import Budget, Poller
from worker.scheduling.router import CLOCK_SKEW_S, Chooser, Router
from worker.scheduling.snapshots import SnapshotCache, SnapshotReader
from worker.state.api_pause import SharedPause
from worker.state.breaker import Breaker
from worker.state.ledger import ClaimItem, ClaimResult, FiringClaim, Ledger
from worker.state.own_writes import OwnWrites
from worker.state.quarantine import Quarantine, is_poison
from worker.state.sla_pauses import SlaPauses
from worker.state.stranded import requeue_stranded
from worker.state.unread import READ_RETRY_RULE, Unread
from worker.state.watermark import Watermark

log = get_logger(__name__)

# The resync evaluates this many conversations at a time, not a page (50): their messages are
# read per channel in packed finds (a channel's last find is short once per chunk), and routing
# loads are read once per chunk. 5,000 keeps both under 1% of a cold resync's requests while a
# chunk's reads stay a few hundred requests (shutdown is checked before each chunk's reads).
RESYNC_CHUNK = 5000
# A resync run pages for at most this share of the resync interval, so runs never overlap.
RESYNC_TIME_SHARE = 0.9


class TickStopped(Exception):
    """Shutdown was asked for mid-tick: the tick ends at the next conversation, the rest is
    left for the next leader (the watermark does not pass what was not processed)."""


class Dispatcher(Protocol):
    """Where claimed steps go: the dramatiq actors, or a list in a dry run."""

    def enqueue(self, step: Step) -> None: ...


@dataclass
class TickReport:
    kind: str
    conversations: int = 0
    matches: int = 0
    steps: list[Step] = field(default_factory=list)
    dedupes: int = 0
    claimed: list[str] = field(default_factory=list)  # item keys of every firing claimed (all actions)
    deferred: list[str] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)


class LedgerState:
    """The evaluator's view of past firings (for caps), read from the ledger."""

    def __init__(self, ledger: Ledger, now: datetime) -> None:
        self._ledger = ledger
        self._now = now

    def fired_count(self, rule_id: str, conversation_id: int) -> int:
        return self._ledger.count_for(rule_id, conversation_id)

    def fired_last_hour(self, rule_id: str) -> int:
        return self._ledger.count_last_hour(rule_id, self._now)


class Loop:
    def __init__(
        self,
        runtime: Runtime,
        dispatcher: Dispatcher,
        *,
        fencing_token: Any = None,
        dry_run: bool = False,
        owner: str = "",
    ) -> None:
        self.runtime = runtime
        self.dispatcher = dispatcher
        self.dry_run = dry_run
        self.owner = owner
        # The leader's fencing token for watermark writes: a value, or a callable read per write.
        self.fencing_token = fencing_token
        self.poller = Poller(runtime.api.client, runtime.settings.page_size, runtime.clock)
        # Set on shutdown: a paging tick ends at its next page boundary.
        self.stop = threading.Event()
        self.watermark = Watermark(runtime.redis)
        self.router = Router(runtime.redis, runtime.api.client, runtime.rulebook, runtime.clock)
        # One reader and its cache for every pass of this loop: a resync reuses what polls read.
        self.snapshots = SnapshotReader(
            runtime.api, SlaPauses(runtime.redis), cache=SnapshotCache(), own_writes=OwnWrites(runtime.redis)
        )
        self.quarantine = Quarantine(runtime.redis, runtime.clock)
        self.unread = Unread(runtime.redis, runtime.clock)
        self.api_pause = SharedPause(runtime.redis, runtime.clock)
        # Called after each conversation's snapshot is read (`inboxpilot plan` draws progress).
        self.on_read: Callable[[], None] | None = None
        self.breaker = breaker_for(runtime)
        self.resync_requested = False  # set by a rule reload that changed the rules

    # --- jobs -------------------------------------------------------------------------------

    def budget(self) -> Budget:
        """One poll's paging budget (settings `poll_max_pages`, `poll_max_tick_s`, and `stop`)."""
        settings = self.runtime.settings
        return Budget(settings.poll_max_pages, settings.poll_max_tick_s, self.stop)

    def resync_budget(self) -> Budget:
        """One resync run's budget: every open conversation within the resync interval.

        Its own, not the poll's: under the poll's 200 pages a run read 10,000 conversations
        and a pass over 80,000 took 8 intervals (80 minutes at the defaults), though it
        needs 190 s of requests. Polls run beside it (their own job), so a long pass holds
        no new conversation back."""
        settings = self.runtime.settings
        return Budget(settings.resync_max_pages, settings.resync_interval_s * RESYNC_TIME_SHARE, self.stop)

    def reload_rules(self) -> bool:
        """Re-read the rule files; when they changed, the next poll re-evaluates every open
        conversation (a new rule or a roster change acts within one poll interval, not at
        the next full resync). Several reloads before that poll cost one pass."""
        changed = self.runtime.rulebook.reload()
        if changed:
            self.resync_requested = True
        return changed

    def poll_once(self) -> TickReport:
        """Incremental poll: what changed since the watermark (after a rule change: every open
        conversation too, once), processed a page at a time."""
        if self.resync_requested:
            self.resync_requested = False
            try:
                self.resync_once()
            except Exception:
                self.resync_requested = True  # the API may be down: the next poll tries again
                raise
            log.info("rules_change_resync_done")
        state = self.watermark.load()
        report = TickReport("incremental")
        try:
            for page in self.poller.changed(state, self.budget()):
                _merge(report, self.process(page.conversations, "incremental"))
                if not self.dry_run:  # the watermark keeps what is processed, page by page
                    self.watermark.advance(page.conversations, self._fencing_token(), page.limit)
        except TickStopped as stopped:  # the page cut short stays before the watermark
            log.info("tick_stopped", kind="incremental", mid_page=True, detail=str(stopped))
        POLLS.labels(kind="incremental").inc()
        if self.watermark.state.updated_at is not None:
            lag = (self.runtime.clock.now() - self.watermark.state.updated_at).total_seconds()
            POLL_LAG_S.set(max(lag, 0.0))
        return report

    def resync_once(self) -> TickReport:
        """Every open conversation: catches what the incremental poll missed, rebuilds timers."""
        total = TickReport("resync")
        chunk: list[Conversation] = []
        try:
            for page in self.poller.open_conversations(self.resync_budget()):
                chunk.extend(page)
                if len(chunk) >= RESYNC_CHUNK:
                    _merge(total, self.process(chunk, "resync"))
                    chunk = []
            if chunk:
                _merge(total, self.process(chunk, "resync"))
        except TickStopped as stopped:  # the next resync starts over
            log.info("tick_stopped", kind="resync", mid_page=True, detail=str(stopped))
        POLLS.labels(kind="resync").inc()
        return total

    def pump_once(self, limit: int = 500) -> TickReport:
        """Act on due-timers: re-read those conversations and evaluate them now."""
        timers = self.runtime.timers
        now = self.runtime.clock.now()
        due = timers.pop_due(now, limit)
        TIMER_BACKLOG.set(timers.backlog(now))
        if not due:
            return TickReport("timers")
        for timer in due:
            TIMER_LATENESS_S.observe(max((now - timer.due).total_seconds(), 0.0))
        try:
            conversations = self._fetch({t.conversation_id for t in due})
            return self.process(conversations, "timers")
        except Exception as exc:
            # Keep the timers: put them back so the next pump retries (the API may be down).
            timers.schedule_many((t.rule_id, t.conversation_id, t.due) for t in due)
            if not isinstance(exc, TickStopped):
                raise
            log.info("tick_stopped", kind="timers", mid_page=True, detail=str(exc))
            return TickReport("timers")

    def redrive_once(self) -> int:
        """Re-enqueue claims that never completed (lost messages, dead schedulers)."""
        if self.dry_run:
            return 0
        if self.api_pause.wait_s() > 0:
            # Every call would wait out the pause anyway; re-driving now only spends the
            # firings' re-drive budget (max_redrives) on an outage.
            return 0
        if self.runtime.ledger.queued_in is not None:
            # Before the ledger judges a message "queued": one a live worker dropped is not.
            requeue_stranded(self.runtime.redis, self.runtime.ledger.queued_in)
        sent = 0
        for key, payload in self.runtime.ledger.due_redrives(self.runtime.clock.now()):
            try:
                step = Step.from_dict(payload)
            except (KeyError, TypeError, ValueError) as exc:
                self.runtime.ledger.mark_failed(key, f"redrive: cannot decode the stored step: {exc!r}")
                continue
            self.dispatcher.enqueue(step)
            sent += 1
        return sent

    # --- the shared path ----------------------------------------------------------------------

    def process(self, conversations: Sequence[Conversation], kind: str) -> TickReport:
        conversations = self.quarantine.admit(conversations) if conversations else []
        report = TickReport(kind, conversations=len(conversations))
        if not conversations:
            return report
        runtime = self.runtime
        # Owner and stage times the documented record lacks (worker/state/observed.py).
        conversations = runtime.observed.apply(conversations, record=not self.dry_run)
        ruleset = runtime.rulebook.ruleset
        now = runtime.clock.now()
        state = LedgerState(runtime.ledger, now)
        # Read in batches (worker/scheduling/snapshots.py); shutdown is checked before the read.
        conversations = list(self._until_stopped(conversations))
        snapshots = self.snapshots.read(
            ruleset,
            conversations,
            now,
            on_error=self._snapshot_failed,
            record_pauses=not self.dry_run,  # SLA clocks skip the pauses seen on earlier ticks
            refresh_contacts=kind == "resync",  # contact edits do not move the conversation
            only_needed=True,  # no message or contact read for rules that cannot match
        )
        if self.on_read is not None:  # progress, one step per conversation read
            for _ in snapshots:
                self.on_read()
        pairs: list[tuple[int, Match]] = []
        self._note_read([s.conversation.id for s in snapshots])
        for snapshot in snapshots:
            try:
                evaluation = evaluate(ruleset, snapshot, now, state, with_reasons=False)
            except Exception as exc:  # a rule that breaks on odd data must not stop the tick
                self._set_aside(snapshot.conversation.id, f"evaluation failed: {type(exc).__name__}: {exc}")
                continue
            CONVERSATIONS_EVALUATED.inc()
            report.evaluations.append(evaluation)
            pairs.extend((evaluation.conversation_id, m) for m in evaluation.matches)
        if not self.dry_run:  # timers follow what each conversation now waits for
            runtime.timers.replace({e.conversation_id: e.next_due for e in report.evaluations})
        report.matches = len(pairs)
        for _, match in pairs:
            RULE_MATCHES.labels(rule=match.rule_id).inc()
        pairs = self._not_paused(pairs, report)
        self._plan_and_dispatch(self._unclaimed(pairs), conversations, report)
        return report

    def _until_stopped(self, conversations: Sequence[Conversation]) -> Iterable[Conversation]:
        """The conversations to read, ending the tick as soon as shutdown is asked for.

        Snapshot reads are the slow part of a tick (a page of 50 conversations may take
        a minute on a slow API): the scheduler must not hold shutdown for them.
        """
        for conversation in conversations:
            if self.stop.is_set():
                raise TickStopped("shutdown: the rest of this page is left for the next tick")
            yield conversation

    def _snapshot_failed(self, conversation: Conversation, exc: Exception) -> None:
        """A conversation left out of this tick stays due: a timer reads it again (state/unread.py)."""
        if self.dry_run:
            return
        retry_at = self.unread.failed(conversation.id)
        if is_poison(exc):
            self.quarantine.add(conversation.id, f"snapshot: {type(exc).__name__}: {exc}")
            retry_at = max(retry_at, self.runtime.clock.now() + timedelta(seconds=self.quarantine.ttl_s))
        self.runtime.timers.schedule(READ_RETRY_RULE, conversation.id, retry_at)

    def _note_read(self, conversation_ids: list[int]) -> None:
        if self.dry_run:
            return
        for waited_s in self.unread.read(conversation_ids):
            UNREAD_S.observe(waited_s)
        UNREAD_OLDEST_S.set(self.unread.oldest_s())

    def _set_aside(self, conversation_id: int, reason: str) -> None:
        if self.dry_run:
            log.error("conversation_evaluation_failed", conversation_id=conversation_id, reason=reason)
            return
        self.quarantine.add(conversation_id, reason)

    def _not_paused(self, pairs: list[tuple[int, Match]], report: TickReport) -> list[tuple[int, Match]]:
        """Matches on conversations the loop breaker has not taken out of automation."""
        paused = self.breaker.paused({c for c, _ in pairs})
        for conversation_id, until in paused.items():
            report.deferred.append(
                f"conversation {conversation_id}: loop breaker, paused until {until.isoformat()}"
            )
        return [(c, m) for c, m in pairs if c not in paused]

    def _unclaimed(self, pairs: list[tuple[int, Match]]) -> list[tuple[int, Match]]:
        """Matches whose firing is not yet in the ledger (a firing is claimed whole)."""
        known = self.runtime.ledger.known([item_key(m.firing_key, 0) for _, m in pairs])
        return [(c, m) for c, m in pairs if item_key(m.firing_key, 0) not in known]

    def _plan_and_dispatch(
        self, pairs: list[tuple[int, Match]], conversations: Sequence[Conversation], report: TickReport
    ) -> None:
        # Read what routing needs first, plan without I/O, then claim and write back.
        chooser = self.router.chooser(pools_asked(m for _, m in pairs))
        ctx = PlanContext({c.id: c for c in conversations}, chooser)
        firings = plan(pairs, ctx)
        deferred = [(item.rule_id, item.conversation_id) for item, _ in ctx.deferred]
        report.deferred.extend(f"{item.key}: {why}" for item, why in ctx.deferred)
        if self.dry_run:
            report.steps.extend(all_steps(firings))
            report.claimed.extend(s.items[0].key for f in firings for s in f.steps)
            return
        won: list[PlannedFiring] = []
        for firing in firings:
            result = self._claim(firing, chooser, report)
            if result is ClaimResult.WON:
                won.append(firing)
            elif result is ClaimResult.AT_CAPACITY:
                self._defer_at_capacity(firing, chooser, ctx)
                deferred.append((firing.rule_id, firing.conversation_id))
        for step in first_steps(won):
            report.steps.append(step)
            self.dispatcher.enqueue(step)
        # deferred assignments retry on a due-timer (worker/scheduling/router.py)
        self.router.apply(chooser, deferred, [e.conversation_id for e in report.evaluations])

    def _claim(self, firing: PlannedFiring, chooser: Chooser, report: TickReport) -> ClaimResult:
        """Claim the whole firing; caps and capacity are checked atomically in the same script."""
        ruleset = self.runtime.rulebook.ruleset
        rule = ruleset.get(firing.rule_id)
        items = tuple(
            self._claim_item(step, pool, chooser)
            for step, pool in zip(firing.steps, firing.pools, strict=True)
        )
        claim = FiringClaim(
            firing.firing_key,
            items,
            owner=self.owner,
            rule_id=firing.rule_id,
            conversation_id=str(firing.conversation_id),
            max_per_conversation=rule.header.max_per_conversation if rule else None,
            max_per_hour=rule.header.max_per_hour if rule else None,
            load_since=chooser.view.read_at - timedelta(seconds=CLOCK_SKEW_S),
        )
        result = self.runtime.ledger.claim_firing(claim)
        if result is ClaimResult.WON:
            report.claimed.extend(item.key for item in claim.items)
            self.breaker.record(firing.conversation_id, firing.firing_key, firing.rule_id)
        elif result is ClaimResult.KNOWN:
            report.dedupes += len(firing.steps)
        else:
            report.deferred.append(f"{firing.firing_key}: {result.value}")
        return result

    def _claim_item(self, step: Step, pool: str | None, chooser: Chooser) -> ClaimItem:
        """An action to claim; an assignment names its agent (their in-flight load), and one
        from a pool also their capacity, which the claim must not exceed."""
        item = step.items[0]
        change = step.bulk
        if change is None or change.action != "assign":
            return ClaimItem(item.key, step.to_dict())
        agent = int(change.as_fields()["owner_id"])
        config = self.runtime.rulebook.ruleset.roster.agents.get(agent)
        capacity = config.capacity if config is not None and pool is not None else None
        base = chooser.view.api_loads.get(agent, 0)
        return ClaimItem(item.key, step.to_dict(), agent=agent, capacity=capacity, base_load=base)

    def _defer_at_capacity(self, firing: PlannedFiring, chooser: Chooser, ctx: PlanContext) -> None:
        """The claim found the agent full (another tick or replica filled them): wait like any
        deferral."""
        pools = self.runtime.rulebook.ruleset.pools
        name = next((p for p in firing.pools if p is not None and p in pools), None)
        conversation = ctx.conversations.get(firing.conversation_id)
        if name is not None and conversation is not None:
            chooser.defer(pools[name], conversation, at_once=False)

    def _fetch(self, ids: Iterable[int]) -> list[Conversation]:
        """Conversations by id, 50 per request."""
        wanted = sorted(ids)
        client = self.runtime.api.client
        out: list[Conversation] = []
        for start in range(0, len(wanted), MAX_BULK_IDS):
            chunk = wanted[start : start + MAX_BULK_IDS]
            query = {"id": {"$in": chunk}, "organization_id": client.organization_id, "$limit": MAX_BULK_IDS}
            page = client.find_page(CONVERSATIONS, query)
            out.extend(client.parse_records(Conversation, page.data, CONVERSATIONS))
        return out

    def _fencing_token(self) -> Any:
        return self.fencing_token() if callable(self.fencing_token) else self.fencing_token


def breaker_for(runtime: Runtime) -> Breaker:
    settings = runtime.settings
    return Breaker(
        runtime.redis,
        runtime.clock,
        max_firings=settings.breaker_max_firings,
        window_s=settings.breaker_window_s,
        pause_s=settings.breaker_pause_s,
    )


def _merge(total: TickReport, part: TickReport) -> None:
    total.conversations += part.conversations
    total.matches += part.matches
    total.steps.extend(part.steps)
    total.dedupes += part.dedupes
    total.claimed.extend(part.claimed)
    total.deferred.extend(part.deferred)
    total.evaluations.extend(part.evaluations)


def summarize(steps: Iterable[Step]) -> Counter[str]:
    return Counter(step.kind for step in steps)
