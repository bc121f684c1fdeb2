"""Routing state in Redis: round-robin pointers, waiting lines, retry times, in-flight assignments.

The router (`worker/scheduling/router.py`) reads this before a tick plans and writes
it after; the planner itself never touches Redis.

=========================================  ====  ================================================
key                                        type  content
=========================================  ====  ================================================
``inboxpilot:routing:rr:<pool>``           STR   round-robin pointer: the next member's index.
                                                 Moved by compare-and-set (Lua) after planning.
``inboxpilot:routing:line:<pool>``         ZSET  conversations deferred for this pool (nobody
                                                 free), score = waiting since (epoch s)
``inboxpilot:routing:line-rule:<pool>``    HASH  conversation id -> the rule that asked, for its
                                                 retry due-timer
``inboxpilot:routing:retry:<pool>``        STR   epoch s of the pool's next retry (shared by every
                                                 deferred conversation, so they retry together,
                                                 oldest first)
``inboxpilot:routing:inflight:<agent>``    ZSET  the agent's assignments claimed in the ledger:
                                                 item key -> 1e15 while not yet applied, the
                                                 "applied at" epoch once done (kept 10 minutes,
                                                 so a load read from the API just before still
                                                 counts it). Written by the ledger's claim and
                                                 finish scripts (`worker/state/ledger.py`).
=========================================  ====  ================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import redis

from worker.clock import from_epoch, to_epoch
from worker.state.ledger import INFLIGHT_PREFIX

POINTER_PREFIX = "inboxpilot:routing:rr:"
LINE_PREFIX = "inboxpilot:routing:line:"
LINE_RULE_PREFIX = "inboxpilot:routing:line-rule:"
RETRY_PREFIX = "inboxpilot:routing:retry:"

_CAS = """
-- KEYS: pointer   ARGV: expected ('' = unset), new
local cur = redis.call('get', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
redis.call('set', KEYS[1], ARGV[2])
return 1
"""


class RoutingStore:
    """The routing keyspace (see the module docstring)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._cas = client.register_script(_CAS)

    # --- pointers -------------------------------------------------------------------------

    def pointers(self, pools: Iterable[str]) -> dict[str, int | None]:
        names = list(pools)
        raw: Any = self._redis.mget([POINTER_PREFIX + n for n in names]) if names else []
        return {n: None if v is None else int(v) for n, v in zip(names, raw, strict=True)}

    def move_pointer(self, pool: str, expected: int | None, new: int) -> bool:
        """Compare-and-set: False when someone moved the pointer since it was read."""
        args = ["" if expected is None else str(expected), str(new)]
        return bool(self._cas(keys=[POINTER_PREFIX + pool], args=args))

    # --- in-flight assignments --------------------------------------------------------------

    def in_flight(self, agents: Iterable[int], since: datetime) -> dict[int, int]:
        """Per agent: assignments claimed and not yet applied, plus those applied at or after
        `since` (when the API loads they add to were read)."""
        ids = list(agents)
        pipe = self._redis.pipeline(transaction=False)
        for agent in ids:
            pipe.zcount(f"{INFLIGHT_PREFIX}{agent}", repr(to_epoch(since)), "+inf")
        return {agent: int(n) for agent, n in zip(ids, pipe.execute(), strict=True)}

    # --- waiting lines ----------------------------------------------------------------------

    def line_head(self, pool: str, count: int) -> list[int]:
        members: Any = self._redis.zrange(LINE_PREFIX + pool, 0, count - 1)
        return [int(_text(m)) for m in members]

    def line(self, pool: str) -> list[tuple[int, datetime]]:
        raw: Any = self._redis.zrange(LINE_PREFIX + pool, 0, -1, withscores=True)
        return [(int(_text(m)), from_epoch(float(s))) for m, s in raw]

    def join_line(self, pool: str, waiting: Mapping[int, datetime]) -> None:
        if waiting:
            self._redis.zadd(LINE_PREFIX + pool, {str(c): to_epoch(t) for c, t in waiting.items()})

    def leave_lines(self, conversation_ids: Iterable[int], pools: Iterable[str]) -> None:
        members = [str(c) for c in conversation_ids]
        if not members:
            return
        pipe = self._redis.pipeline(transaction=False)
        for name in pools:
            pipe.zrem(LINE_PREFIX + name, *members)
            pipe.hdel(LINE_RULE_PREFIX + name, *members)
        pipe.execute()

    def set_line_rules(self, pool: str, rules: Mapping[str, str]) -> None:
        if rules:
            self._redis.hset(LINE_RULE_PREFIX + pool, mapping=dict(rules))  # type: ignore[arg-type]

    def line_rules(self, pool: str, conversations: list[str]) -> list[str | None]:
        raw: Any = self._redis.hmget(LINE_RULE_PREFIX + pool, conversations)
        return [None if r is None else _text(r) for r in raw]

    # --- retry times ------------------------------------------------------------------------

    def retry_time(self, pool: str) -> datetime | None:
        raw: Any = self._redis.get(RETRY_PREFIX + pool)
        return None if raw is None else from_epoch(float(raw))

    def set_retry_time(self, pool: str, due: datetime) -> None:
        self._redis.set(RETRY_PREFIX + pool, repr(to_epoch(due)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
