"""Routing for a tick: read the pools' state, let the pure planner choose, then write it back.

The choice itself is the pure `worker.rules.routing.choose_agent`. A tick goes:

1. `Router.read(pools)` (I/O): each pool's round-robin pointer, its members' loads and
   its waiting line. A member's load is their open conversations in the API (one paged
   find by owner, or one count per agent when that is fewer requests) **plus** their
   assignments claimed in the ledger and not yet applied (`worker/state/routing.py`), so
   a queue that lags never makes an agent look free.
2. `Chooser` (pure): answers the planner's `choose` from that view, updating loads and
   pointers as it assigns, and notes who was deferred or settled.
3. `Router.apply(chooser, ...)` (I/O): pointers by compare-and-set, waiting lines, and a
   retry due-timer for each deferred conversation at the pool's retry time (next shift
   start of an off-shift member, or `retry_s` from now), so a full pool costs a few
   requests per `retry_s`, not per tick.

Capacity is checked once more where it cannot race: in the ledger's claim script, which
counts the agent's in-flight assignments (`worker/state/ledger.py`). A conversation that
could be served while an older one for the same agent waits in line is deferred too and
the line retried at once: the oldest waiting conversation is always served first.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis

from worker.api.client import ApiClient
from worker.api.models import Conversation
from worker.api.services import CONVERSATIONS, MAX_BULK_IDS
from worker.clock import Clock
from worker.logs import get_logger
from worker.rules.book import Rulebook
from worker.rules.model import RuleSet
from worker.rules.routing import Choice, Pool, choose_agent, retry_at, skill_needs, waiting_since
from worker.state.routing import RoutingStore
from worker.state.timers import TIMERS_KEY, DueTimers

log = get_logger(__name__)

DEFAULT_RETRY_S = 60.0
# A line is woken ("retry now") at most this often, so a line that cannot move never spins.
MIN_WAKE_INTERVAL_S = 10.0
# Only the oldest this many of a line hold due-timers; the rest move up as the head is served.
LINE_HEAD = MAX_BULK_IDS
# Assignments applied this long before the API loads were read still count as in flight
# (a worker's clock may run a little ahead of the scheduler's): counting one twice defers
# an assignment by one retry, counting it never could exceed a capacity.
CLOCK_SKEW_S = 5.0


@dataclass
class RoutingView:
    """What `Router.read` saw before planning: the planner's whole routing input."""

    now: datetime
    read_at: datetime  # when the API loads were read (in-flight counts start here)
    pointers: dict[str, int | None] = field(default_factory=dict)
    api_loads: dict[int, int] = field(default_factory=dict)  # open conversations in the API
    loads: dict[int, int] = field(default_factory=dict)  # plus assignments in flight
    lines: dict[str, list[Conversation]] = field(default_factory=dict)  # oldest first, still waiting


class Chooser:
    """The planner's `PoolResolver`: pure, on a `RoutingView`; remembers what it decided."""

    def __init__(self, view: RoutingView, ruleset: RuleSet) -> None:
        self.view = view
        self._ruleset = ruleset
        self.pointers: dict[str, int | None] = dict(view.pointers)
        self.loads = dict(view.loads)
        self.deferred: dict[int, tuple[str, bool]] = {}  # conversation -> (pool, retry at once?)
        self.waiting: dict[str, dict[int, datetime]] = {}  # pool -> conversations joining its line
        self.settled: set[int] = set()
        self.lineless: set[int] = set()  # deferred hand-ons: they keep their owner, no line
        self.wake: set[str] = set()
        self._answers: dict[tuple[str, int, tuple[int, ...]], Choice] = {}

    def choose(self, pool_name: str, conversation: Conversation, *, exclude: Collection[int] = ()) -> Choice:
        # Two rules asking the same pool for one conversation in one tick get one answer.
        key = (pool_name, conversation.id, tuple(sorted(exclude)))
        if key not in self._answers:
            self._answers[key] = self._choose(pool_name, conversation, exclude)
        return self._answers[key]

    def _choose(self, pool_name: str, conversation: Conversation, exclude: Collection[int]) -> Choice:
        pool, roster, now = self._ruleset.pools[pool_name], self._ruleset.roster, self.view.now
        pointer = self.pointers.get(pool_name) or 0
        choice = choose_agent(
            pool, roster, now, self.loads, pointer, conversation=conversation, exclude=exclude
        )
        if choice.agent_id is None:
            if choice.fallback is None:
                self.defer(pool, conversation, at_once=False)
            else:
                self.settled.add(conversation.id)
            return choice
        older = self._older_waiting(pool, conversation, choice.agent_id)
        if older is not None:
            self.defer(pool, conversation, at_once=True)
            self.wake.add(pool.name)
            why = f"agent {choice.agent_id}: conversation {older} has waited longer"
            return Choice(None, pointer, (*choice.skipped, why), None)
        if pool.strategy == "round_robin":
            self.pointers[pool_name] = choice.new_pointer
        self.loads[choice.agent_id] = self.loads.get(choice.agent_id, 0) + 1  # updated as we assign
        self.settled.add(conversation.id)
        self.deferred.pop(conversation.id, None)
        return choice

    def defer(self, pool: Pool, conversation: Conversation, *, at_once: bool) -> None:
        """Nobody for this conversation now: it waits in the pool's line (a hand-on keeps its
        owner meanwhile and waits on a timer instead)."""
        self.deferred[conversation.id] = (pool.name, at_once)
        self.settled.discard(conversation.id)
        if conversation.owner_id is not None:
            self.lineless.add(conversation.id)
        else:
            since = waiting_since(conversation) or self.view.now
            self.waiting.setdefault(pool.name, {})[conversation.id] = since

    def _older_waiting(self, pool: Pool, conversation: Conversation, agent_id: int) -> int | None:
        """A conversation in the pool's line that waited longer and that `agent_id` could take."""
        if conversation.owner_id is not None:
            return None  # hand-ons do not queue behind new conversations
        now = self.view.now
        since = waiting_since(conversation) or now
        roster = self._ruleset.roster
        for older in self.view.lines.get(pool.name, []):
            if older.id == conversation.id or older.id in self.settled or older.id in self.deferred:
                continue
            if (waiting_since(older) or now) >= since:
                continue
            needs = skill_needs(pool, roster, older)
            agent = roster.agents.get(agent_id)
            if pool.skill_match == "require" and needs and agent and not needs & set(agent.skills):
                continue
            return older.id
        return None


class Router:
    """Reads routing state before a tick plans and writes it back after (module docstring)."""

    def __init__(
        self,
        redis_client: redis.Redis,
        client: ApiClient,
        rulebook: Rulebook,
        clock: Clock,
        *,
        timers: DueTimers | None = None,
        retry_s: float = DEFAULT_RETRY_S,
    ) -> None:
        self._redis = redis_client
        self.store = RoutingStore(redis_client)
        self._client = client
        self._rulebook = rulebook
        self._clock = clock
        self._timers = timers or DueTimers(redis_client)
        self._retry = timedelta(seconds=retry_s)
        self._last_wake: dict[str, datetime] = {}
        self.load_requests = 0  # API requests spent reading loads and lines by the last `read`

    # --- before planning ------------------------------------------------------------------

    def read(self, pools: Iterable[str]) -> RoutingView:
        """Everything the planner needs about `pools` (unknown names are ignored)."""
        ruleset = self._rulebook.ruleset
        names = sorted({p for p in pools if p in ruleset.pools})
        now = self._clock.now()
        view = RoutingView(now=now, read_at=now)
        self.load_requests = 0
        if not names:
            return view
        view.pointers = self.store.pointers(names)
        counted = sorted(
            {m for n in names if self._counted(ruleset.pools[n]) for m in ruleset.pools[n].members}
        )
        if counted:
            view.api_loads = self._read_loads(counted)
            since = now - timedelta(seconds=CLOCK_SKEW_S)
            flying = self.store.in_flight(counted, since)
            view.loads = {a: view.api_loads.get(a, 0) + flying.get(a, 0) for a in counted}
        view.lines = {n: self._line_records(n) for n in names}
        return view

    def chooser(self, pools: Iterable[str]) -> Chooser:
        return Chooser(self.read(pools), self._rulebook.ruleset)

    def _counted(self, pool: Pool) -> bool:
        roster = self._rulebook.ruleset.roster
        return pool.strategy == "least_loaded" or any(
            (a := roster.agents.get(m)) is not None and a.capacity is not None for m in pool.members
        )

    def _read_loads(self, agents: list[int]) -> dict[int, int]:
        """Open conversations per agent: one paged find by owner, or a count per agent when
        that takes fewer requests (the first page's `total` tells which)."""
        query = {
            "organization_id": self._client.organization_id,
            "status": "open",
            "owner_id": {"$in": agents},
        }
        paged = {**query, "$select": ["id", "owner_id"], "$sort": {"id": 1}}
        page = self._client.find_page(CONVERSATIONS, {**paged, "$limit": MAX_BULK_IDS})
        self.load_requests += 1
        loads = dict.fromkeys(agents, 0)
        per_page = page.limit or MAX_BULK_IDS
        if math.ceil(page.total / per_page) - 1 > len(agents):
            for agent in agents:
                counted = self._client.find_page(CONVERSATIONS, {**query, "owner_id": agent, "$limit": 1})
                loads[agent] = counted.total
                self.load_requests += 1
            return loads
        seen: set[object] = set()
        while True:
            for raw in page.data:
                if raw.get("id") not in seen and raw.get("owner_id") in loads:
                    seen.add(raw.get("id"))
                    loads[raw["owner_id"]] += 1
            skip = page.skip + page.received
            if not page.received or skip >= page.total:
                return loads
            page = self._client.find_page(CONVERSATIONS, {**paged, "$limit": per_page, "$skip": skip})
            self.load_requests += 1

    def _line_records(self, pool_name: str) -> list[Conversation]:
        """The pool's line, oldest first; entries no longer waiting (closed, assigned, gone)
        leave the line."""
        ids = self.store.line_head(pool_name, MAX_BULK_IDS)
        if not ids:
            return []
        query = {"organization_id": self._client.organization_id, "id": {"$in": ids}, "$limit": MAX_BULK_IDS}
        page = self._client.find_page(CONVERSATIONS, query)
        self.load_requests += 1
        found = {c.id: c for c in self._client.parse_records(Conversation, page.data, CONVERSATIONS)}
        records = [found[i] for i in ids if i in found and _still_waiting(found[i])]
        stale = [i for i in ids if i not in {r.id for r in records}]
        self.store.leave_lines(stale, [pool_name])
        return records

    # --- after planning ---------------------------------------------------------------------

    def apply(self, chooser: Chooser, deferred: Iterable[tuple[str, int]], evaluated: Iterable[int]) -> None:
        """Write back what the tick decided: pointers, lines, retry timers.

        Drops from the lines conversations evaluated this tick that no longer ask for a
        pool (assigned, closed, moot); gives the head of each line and every deferred hand-on
        a retry due-timer (the rest of a line waits its turn without one)."""
        self._move_pointers(chooser)
        for pool_name, waiting in chooser.waiting.items():
            self.store.join_line(pool_name, {c: t for c, t in waiting.items() if c in chooser.deferred})
        now = self._clock.now()
        woken = {name: self._wake_time(name, now) for name in chooser.wake}
        rules: dict[str, dict[str, str]] = {}
        timers: list[tuple[str, int, datetime]] = []
        for rule_id, conversation_id in deferred:
            intent = chooser.deferred.get(conversation_id)
            if intent is None:
                continue
            pool_name, _ = intent
            if conversation_id in chooser.lineless:
                timers.append((rule_id, conversation_id, self._retry_time(pool_name, now)))
            else:
                rules.setdefault(pool_name, {})[str(conversation_id)] = rule_id
        for pool_name, mapping in rules.items():
            self.store.set_line_rules(pool_name, mapping)
        pools = self._rulebook.ruleset.pools
        self.store.leave_lines({c for c in evaluated if c not in chooser.deferred} | chooser.settled, pools)
        for pool_name in pools:
            timers.extend(self._head_timers(pool_name, now, woken.get(pool_name)))
        if timers:
            self._timers.schedule_many(timers)

    def _move_pointers(self, chooser: Chooser) -> None:
        for pool_name, new in chooser.pointers.items():
            expected = chooser.view.pointers.get(pool_name)
            if new is None or new == expected:
                continue
            if not self.store.move_pointer(pool_name, expected, new):
                # Another scheduler moved it meanwhile (only during a leader change-over):
                # its turn stands; capacity still held, the ledger's claim checked it.
                log.warning("routing_pointer_raced", pool=pool_name, expected=expected, new=new)

    def _head_timers(
        self, pool_name: str, now: datetime, woken: datetime | None
    ) -> list[tuple[str, int, datetime]]:
        """Timers for the oldest LINE_HEAD of a line: all at `woken` when the line was woken,
        else at the pool's retry time for those without one (existing timers are not moved)."""
        convs = [str(c) for c in self.store.line_head(pool_name, LINE_HEAD)]
        if not convs:
            return []
        rules = self.store.line_rules(pool_name, convs)
        head = [(r, int(c)) for c, r in zip(convs, rules, strict=True) if r is not None]
        if woken is not None:
            return [(rule, conv, woken) for rule, conv in head]
        pipe = self._redis.pipeline(transaction=False)
        for rule, conv in head:
            pipe.zscore(TIMERS_KEY, f"{rule}|{conv}")
        missing = [pair for pair, score in zip(head, pipe.execute(), strict=True) if score is None]
        if not missing:
            return []
        due = self._retry_time(pool_name, now)
        return [(rule, conv, due) for rule, conv in missing]

    def _retry_time(self, pool_name: str, now: datetime) -> datetime:
        """The pool's shared retry time: kept while in the future, else the next one."""
        kept = self.store.retry_time(pool_name)
        if kept is not None and kept > now:
            return kept
        ruleset = self._rulebook.ruleset
        due = retry_at(ruleset.pools[pool_name], ruleset.roster, now, self._retry)
        self.store.set_retry_time(pool_name, due)
        return due

    def _wake_time(self, pool_name: str, now: datetime) -> datetime:
        """Now, unless the line was woken less than MIN_WAKE_INTERVAL_S ago (then a bit later)."""
        last = self._last_wake.get(pool_name)
        when = now
        if last is not None and (now - last).total_seconds() < MIN_WAKE_INTERVAL_S:
            when = last + timedelta(seconds=MIN_WAKE_INTERVAL_S)
        self._last_wake[pool_name] = when
        return when

    # --- inspection -------------------------------------------------------------------------

    def line(self, pool_name: str) -> list[tuple[int, datetime]]:
        """The pool's waiting line, oldest first: (conversation id, waiting since)."""
        return self.store.line(pool_name)


def _still_waiting(conversation: Conversation) -> bool:
    return conversation.status == "open" and conversation.owner_id is None
