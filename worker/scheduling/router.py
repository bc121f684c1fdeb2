"""Routing state: the round-robin pointers, agents' open load, and the pools' waiting lines.

The choice itself is the pure `worker.rules.routing.choose_agent`; this module
feeds it state, records the outcome, and keeps conversations nobody could take
waiting in line until someone frees up.

Redis keys (no TTL; small, one set per pool):

=========================================  ====  ================================================
key                                        type  content
=========================================  ====  ================================================
``inboxpilot:routing:rr:<pool>``           STR   round-robin pointer: the next member's index.
                                                 Moved by compare-and-set (Lua), so two replicas
                                                 never hand out the same turn.
``inboxpilot:routing:line:<pool>``         ZSET  conversations deferred for this pool (nobody
                                                 free), score = waiting since (epoch s)
``inboxpilot:routing:line-rule:<pool>``    HASH  conversation id -> the rule that asked, for its
                                                 retry due-timer
``inboxpilot:routing:retry:<pool>``        STR   epoch s of the pool's next retry (shared by every
                                                 deferred conversation, so they retry together,
                                                 oldest first)
=========================================  ====  ================================================

Per tick (`begin_tick` .. `end_tick`): loads are read once (one paged find of
the pool members' open conversations, or one count per agent when that is
fewer requests) and updated as we assign. A deferred conversation gets a due-
timer at the pool's retry time (next shift start of an off-shift member, or
`retry_s` from now), so a full pool costs a few requests per `retry_s`, not
per tick. A conversation that could be served while an older one for the same
agent waits in line is deferred too and the line retried at once: the oldest
waiting conversation is always served first.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis

from worker.api.client import ApiClient
from worker.api.models import Conversation
from worker.api.services import CONVERSATIONS, MAX_BULK_IDS
from worker.clock import Clock, from_epoch, to_epoch
from worker.logs import get_logger
from worker.rules.book import Rulebook
from worker.rules.routing import Choice, Pool, choose_agent, retry_at, skill_needs, waiting_since
from worker.state.timers import TIMERS_KEY, DueTimers

log = get_logger(__name__)

POINTER_PREFIX = "inboxpilot:routing:rr:"
LINE_PREFIX = "inboxpilot:routing:line:"
LINE_RULE_PREFIX = "inboxpilot:routing:line-rule:"
RETRY_PREFIX = "inboxpilot:routing:retry:"
DEFAULT_RETRY_S = 60.0
# A line is woken ("retry now") at most this often, so a line that cannot move never spins.
MIN_WAKE_INTERVAL_S = 10.0
# Only the oldest this many of a line hold due-timers; the rest move up as the head is served.
LINE_HEAD = MAX_BULK_IDS
CAS_ATTEMPTS = 8

_CAS = """
-- KEYS: pointer   ARGV: expected ('' = unset), new
local cur = redis.call('get', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
redis.call('set', KEYS[1], ARGV[2])
return 1
"""


class PointerContention(RuntimeError):
    """The round-robin pointer kept moving under us (many replicas choosing at once)."""


@dataclass
class _Tick:
    """What one tick learnt: loads, lines checked, conversations deferred or settled."""

    loads: dict[int, int] = field(default_factory=dict)
    read: set[int] = field(default_factory=set)  # agents whose load was read from the API
    line_records: dict[str, list[Conversation]] = field(default_factory=dict)
    deferred: dict[int, tuple[str, bool]] = field(default_factory=dict)  # conv -> (pool, now?)
    settled: set[int] = field(default_factory=set)
    lineless: set[int] = field(default_factory=set)  # deferred hand-ons: they keep their owner
    wake: set[str] = field(default_factory=set)
    answers: dict[tuple[str, int, tuple[int, ...]], Choice] = field(default_factory=dict)
    requests: int = 0


class Router:
    """Resolves `assign {pool}` for the planner (the planner's `PoolResolver`)."""

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
        self._client = client
        self._rulebook = rulebook
        self._clock = clock
        self._timers = timers or DueTimers(redis_client)
        self._retry = timedelta(seconds=retry_s)
        self._cas = redis_client.register_script(_CAS)
        self._tick = _Tick()
        self._preview_pointers: dict[str, int] = {}
        self._last_wake: dict[str, datetime] = {}

    @property
    def load_requests(self) -> int:
        """API requests spent reading loads and lines this tick (for tests and metrics)."""
        return self._tick.requests

    def begin_tick(self) -> None:
        """Forget cached loads and line checks: they are read again at most once per tick."""
        self._tick = _Tick()
        self._preview_pointers = {}

    # --- choosing -------------------------------------------------------------------------

    def choose(self, pool_name: str, conversation: Conversation, *, exclude: Collection[int] = ()) -> Choice:
        # Two rules asking the same pool for one conversation in one tick get one answer.
        key = (pool_name, conversation.id, tuple(sorted(exclude)))
        if key in self._tick.answers:
            return self._tick.answers[key]
        choice = self._choose(pool_name, conversation, exclude)
        self._tick.answers[key] = choice
        return choice

    def preview(self, pool_name: str, conversation: Conversation, *, exclude: Collection[int] = ()) -> Choice:
        """What `choose` would answer, moving no pointer and joining no line (`inboxpilot plan`)."""
        ruleset = self._rulebook.ruleset
        pool = ruleset.pools[pool_name]
        loads = self._loads_for(pool)
        pointer = self._preview_pointers.get(pool_name, self._read_pointer(pool) or 0)
        choice = choose_agent(
            pool,
            ruleset.roster,
            self._clock.now(),
            loads,
            pointer,
            conversation=conversation,
            exclude=exclude,
        )
        if choice.agent_id is not None:
            self._preview_pointers[pool_name] = choice.new_pointer
            self._tick.loads[choice.agent_id] = self._tick.loads.get(choice.agent_id, 0) + 1
        return choice

    def _choose(self, pool_name: str, conversation: Conversation, exclude: Collection[int]) -> Choice:
        ruleset = self._rulebook.ruleset
        pool, roster, now = ruleset.pools[pool_name], ruleset.roster, self._clock.now()
        loads = self._loads_for(pool)
        for _ in range(CAS_ATTEMPTS):
            pointer = self._read_pointer(pool)
            choice = choose_agent(
                pool, roster, now, loads, pointer or 0, conversation=conversation, exclude=exclude
            )
            if choice.agent_id is None:
                return self._nobody(pool, conversation, choice)
            older = self._older_waiting(pool, conversation, choice.agent_id, now)
            if older is not None:
                self._defer(pool, conversation, at_once=True)
                self._tick.wake.add(pool.name)
                why = f"agent {choice.agent_id}: conversation {older} has waited longer"
                return Choice(None, pointer or 0, (*choice.skipped, why), None)
            if pool.strategy != "round_robin" or self._commit(pool, pointer, choice.new_pointer):
                self._assigned(conversation, choice.agent_id)
                return choice
        raise PointerContention(f"pool {pool_name!r}: the round-robin pointer kept changing")

    def _nobody(self, pool: Pool, conversation: Conversation, choice: Choice) -> Choice:
        if choice.fallback is None:
            self._defer(pool, conversation, at_once=False)
        else:
            self._tick.settled.add(conversation.id)
        return choice

    def _defer(self, pool: Pool, conversation: Conversation, *, at_once: bool) -> None:
        self._tick.deferred[conversation.id] = (pool.name, at_once)
        if conversation.owner_id is not None:  # a hand-on keeps its owner meanwhile: no line
            self._tick.lineless.add(conversation.id)
        else:
            since = waiting_since(conversation) or self._clock.now()
            self._redis.zadd(LINE_PREFIX + pool.name, {str(conversation.id): to_epoch(since)})

    def _assigned(self, conversation: Conversation, agent_id: int) -> None:
        self._tick.loads[agent_id] = self._tick.loads.get(agent_id, 0) + 1  # updated as we assign
        self._tick.settled.add(conversation.id)
        self._tick.deferred.pop(conversation.id, None)

    # --- the round-robin pointer ------------------------------------------------------------

    def _read_pointer(self, pool: Pool) -> int | None:
        raw = self._redis.get(POINTER_PREFIX + pool.name)
        return None if raw is None else int(raw)  # type: ignore[arg-type]

    def _commit(self, pool: Pool, expected: int | None, new: int) -> bool:
        """Move the pointer only if nobody moved it since we read it (compare-and-set)."""
        args = ["" if expected is None else str(expected), str(new)]
        return bool(self._cas(keys=[POINTER_PREFIX + pool.name], args=args))

    # --- loads ------------------------------------------------------------------------------

    def _loads_for(self, pool: Pool) -> dict[int, int]:
        roster = self._rulebook.ruleset.roster
        counted = pool.strategy == "least_loaded" or any(
            (a := roster.agents.get(m)) is not None and a.capacity is not None for m in pool.members
        )
        tick = self._tick
        missing = [m for m in pool.members if m not in tick.read]
        if counted and missing:
            for agent, load in self._read_loads(missing).items():
                tick.loads[agent] = load + tick.loads.get(agent, 0)  # plus what we assigned this tick
            tick.read.update(missing)
        return tick.loads

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
        self._tick.requests += 1
        loads = dict.fromkeys(agents, 0)
        per_page = page.limit or MAX_BULK_IDS
        if math.ceil(page.total / per_page) - 1 > len(agents):
            for agent in agents:
                counted = self._client.find_page(CONVERSATIONS, {**query, "owner_id": agent, "$limit": 1})
                loads[agent] = counted.total
                self._tick.requests += 1
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
            self._tick.requests += 1

    # --- the waiting line -------------------------------------------------------------------

    def _older_waiting(
        self, pool: Pool, conversation: Conversation, agent_id: int, now: datetime
    ) -> int | None:
        """A conversation in the pool's line that waited longer and that `agent_id` could take."""
        if conversation.owner_id is not None:
            return None  # hand-ons do not queue behind new conversations
        since = waiting_since(conversation) or now
        roster = self._rulebook.ruleset.roster
        for older in self._line_records(pool):
            if (
                older.id == conversation.id
                or older.id in self._tick.settled
                or older.id in self._tick.deferred
            ):
                continue
            if (waiting_since(older) or now) >= since:
                continue
            needs = skill_needs(pool, roster, older)
            agent = roster.agents.get(agent_id)
            if pool.skill_match == "require" and needs and agent and not needs & set(agent.skills):
                continue
            return older.id
        return None

    def _line_records(self, pool: Pool) -> list[Conversation]:
        """The pool's line, oldest first, re-read once per tick; entries no longer waiting
        (closed, assigned, gone) leave the line."""
        cached = self._tick.line_records.get(pool.name)
        if cached is not None:
            return cached
        key = LINE_PREFIX + pool.name
        members: Any = self._redis.zrange(key, 0, MAX_BULK_IDS - 1)
        ids = [int(_text(m)) for m in members]
        records: list[Conversation] = []
        if ids:
            query = {
                "organization_id": self._client.organization_id,
                "id": {"$in": ids},
                "$limit": MAX_BULK_IDS,
            }
            page = self._client.find_page(CONVERSATIONS, query)
            self._tick.requests += 1
            parsed = self._client.parse_records(Conversation, page.data, CONVERSATIONS)
            found = {c.id: c for c in parsed}
            records = [found[i] for i in ids if i in found and _still_waiting(found[i])]
            stale = [i for i in ids if i not in {r.id for r in records}]
            if stale:
                self._leave_line(stale, [pool.name])
        self._tick.line_records[pool.name] = records
        return records

    def _leave_line(self, conversation_ids: Iterable[int], pools: Iterable[str]) -> None:
        members = [str(c) for c in conversation_ids]
        if not members:
            return
        pipe = self._redis.pipeline(transaction=False)
        for name in pools:
            pipe.zrem(LINE_PREFIX + name, *members)
            pipe.hdel(LINE_RULE_PREFIX + name, *members)
        pipe.execute()

    # --- end of tick: retry timers and line upkeep ---------------------------------------------

    def end_tick(self, deferred: Iterable[tuple[str, int]], evaluated: Iterable[int]) -> None:
        """Drop from the lines conversations evaluated this tick that no longer ask for a pool
        (assigned, closed, moot); give the head of each line and every deferred hand-on a retry
        due-timer (the rest of a line waits its turn without one)."""
        now, tick = self._clock.now(), self._tick
        woken = {name: self._wake_time(name, now) for name in tick.wake}
        rules: dict[str, dict[str, str]] = {}
        timers: list[tuple[str, int, datetime]] = []
        for rule_id, conversation_id in deferred:
            intent = tick.deferred.get(conversation_id)
            if intent is None:
                continue
            pool_name, _ = intent
            if conversation_id in tick.lineless:
                timers.append((rule_id, conversation_id, self._retry_time(pool_name, now)))
            else:
                rules.setdefault(pool_name, {})[str(conversation_id)] = rule_id
        for pool_name, mapping in rules.items():
            self._redis.hset(LINE_RULE_PREFIX + pool_name, mapping=dict(mapping))  # type: ignore[arg-type]
        self._leave_line(
            {c for c in evaluated if c not in tick.deferred} | tick.settled, self._rulebook.ruleset.pools
        )
        for pool_name in self._rulebook.ruleset.pools:
            timers.extend(self._head_timers(pool_name, now, woken.get(pool_name)))
        if timers:
            self._timers.schedule_many(timers)

    def _head_timers(
        self, pool_name: str, now: datetime, woken: datetime | None
    ) -> list[tuple[str, int, datetime]]:
        """Timers for the oldest LINE_HEAD of a line: all at `woken` when the line was woken,
        else at the pool's retry time for those without one (existing timers are not moved)."""
        members: Any = self._redis.zrange(LINE_PREFIX + pool_name, 0, LINE_HEAD - 1)
        if not members:
            return []
        convs = [_text(m) for m in members]
        rules: Any = self._redis.hmget(LINE_RULE_PREFIX + pool_name, convs)
        head = [(_text(r), int(c)) for c, r in zip(convs, rules, strict=True) if r is not None]
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
        key = RETRY_PREFIX + pool_name
        raw = self._redis.get(key)
        if raw is not None and from_epoch(float(raw)) > now:  # type: ignore[arg-type]
            return from_epoch(float(raw))  # type: ignore[arg-type]
        ruleset = self._rulebook.ruleset
        due = retry_at(ruleset.pools[pool_name], ruleset.roster, now, self._retry)
        self._redis.set(key, repr(to_epoch(due)))
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
        raw: Any = self._redis.zrange(LINE_PREFIX + pool_name, 0, -1, withscores=True)
        return [(int(_text(m)), from_epoch(float(s))) for m, s in raw]


def _still_waiting(conversation: Conversation) -> bool:
    return conversation.status == "open" and conversation.owner_id is None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class PreviewResolver:
    """The planner's resolver for dry runs: the router's answers, with no state written."""

    def __init__(self, router: Router) -> None:
        self._router = router

    def choose(self, pool_name: str, conversation: Conversation, *, exclude: Collection[int] = ()) -> Choice:
        return self._router.preview(pool_name, conversation, exclude=exclude)
