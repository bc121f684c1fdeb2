"""Due-timers: when a time-based rule will next become true for a conversation.

The evaluator says "rule R becomes true for conversation C at T"; the pump pops
what is due, re-reads C and re-evaluates. One timer per (rule, conversation):
scheduling again moves it. A customer reply or any change that makes a rule
moot cancels the conversation's timers (``cancel_conversation``).

Redis keys:

======================================  ====  ==================================================
key                                     type  content / TTL
======================================  ====  ==================================================
``inboxpilot:timers``                   ZSET  member ``"<rule_id>|<conversation_id>"``, score = due
                                              epoch seconds; no TTL (popped or cancelled)
``inboxpilot:timers:conv:<conv_id>``    SET   rule ids with a timer for that conversation (the
                                              index behind ``cancel_conversation``); no TTL,
                                              deleted when it empties
======================================  ====  ==================================================

Every change to both keys is one Lua script, so ``pop_due`` is atomic: two
pumps never pop the same timer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import redis

from worker.clock import from_epoch, to_epoch

TIMERS_KEY = "inboxpilot:timers"
CONV_INDEX_PREFIX = "inboxpilot:timers:conv:"
SEPARATOR = "|"

_SCHEDULE = """
-- KEYS: timers   ARGV: index_prefix, then triples (member, due, rule_id, conv_id)...
for i = 2, #ARGV, 4 do
  redis.call('zadd', KEYS[1], ARGV[i + 1], ARGV[i])
  redis.call('sadd', ARGV[1] .. ARGV[i + 3], ARGV[i + 2])
end
return (#ARGV - 1) / 4
"""

_CANCEL_CONVERSATION = """
-- KEYS: timers, index   ARGV: conv_id, except rule ids...
local keep = {}
for i = 2, #ARGV do keep[ARGV[i]] = true end
local removed = 0
for _, rule in ipairs(redis.call('smembers', KEYS[2])) do
  if not keep[rule] then
    removed = removed + redis.call('zrem', KEYS[1], rule .. '|' .. ARGV[1])
    redis.call('srem', KEYS[2], rule)
  end
end
return removed
"""

_POP_DUE = """
-- KEYS: timers   ARGV: now, limit, index_prefix
local due = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
for i = 1, #due, 2 do
  local member = due[i]
  redis.call('zrem', KEYS[1], member)
  local sep = string.find(member, '|', 1, true)
  redis.call('srem', ARGV[3] .. string.sub(member, sep + 1), string.sub(member, 1, sep - 1))
end
return due
"""


@dataclass(frozen=True)
class DueTimer:
    rule_id: str
    conversation_id: int
    due: datetime


def _member(rule_id: str, conversation_id: int) -> str:
    if not rule_id or SEPARATOR in rule_id:
        raise ValueError(f"rule id {rule_id!r} must be non-empty and contain no {SEPARATOR!r}")
    return f"{rule_id}{SEPARATOR}{conversation_id}"


def _schedule_args(rule_id: str, conversation_id: int, due: datetime) -> list[str]:
    """One timer's arguments for the _SCHEDULE script."""
    return [_member(rule_id, conversation_id), repr(to_epoch(due)), rule_id, str(conversation_id)]


def _index(conversation_id: int) -> str:
    return f"{CONV_INDEX_PREFIX}{conversation_id}"


class DueTimers:
    """The due-timer set in Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._schedule = client.register_script(_SCHEDULE)
        self._cancel_conv = client.register_script(_CANCEL_CONVERSATION)
        self._pop = client.register_script(_POP_DUE)

    def schedule(self, rule_id: str, conversation_id: int, due: datetime) -> None:
        """Set (or move) the timer of a rule for a conversation."""
        self.schedule_many([(rule_id, conversation_id, due)])

    def schedule_many(self, timers: Iterable[tuple[str, int, datetime]], batch: int = 1000) -> int:
        """Set many timers (a resync rebuilding them), `batch` per round trip; returns the count."""
        total = 0
        args: list[str] = []
        for rule_id, conversation_id, due in timers:
            args += _schedule_args(rule_id, conversation_id, due)
            if len(args) >= 4 * batch:
                total += int(self._schedule(keys=[TIMERS_KEY], args=[CONV_INDEX_PREFIX, *args]))
                args = []
        if args:
            total += int(self._schedule(keys=[TIMERS_KEY], args=[CONV_INDEX_PREFIX, *args]))
        return total

    def cancel(self, rule_id: str, conversation_id: int) -> bool:
        """Remove one timer; True when it existed."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(TIMERS_KEY, _member(rule_id, conversation_id))
        pipe.srem(_index(conversation_id), rule_id)
        removed, _ = pipe.execute()
        return bool(removed)

    def cancel_conversation(self, conversation_id: int, except_rules: Iterable[str] = ()) -> int:
        """Remove all timers of a conversation except those of `except_rules`; returns how many."""
        keys = [TIMERS_KEY, _index(conversation_id)]
        return int(self._cancel_conv(keys=keys, args=[str(conversation_id), *except_rules]))

    def replace(self, due_by_conversation: Mapping[int, Mapping[str, datetime]]) -> None:
        """Make each conversation's timers exactly the given ones (the rest cancelled), in one round trip.

        The poll loop calls this once per tick for every conversation it evaluated.
        """
        if not due_by_conversation:
            return
        pipe = self._redis.pipeline(transaction=False)
        args: list[str] = []
        for conversation_id, dues in due_by_conversation.items():
            keys = [TIMERS_KEY, _index(conversation_id)]
            self._cancel_conv(keys=keys, args=[str(conversation_id), *dues], client=pipe)
            for rule_id, due in dues.items():
                args += _schedule_args(rule_id, conversation_id, due)
        if args:
            self._schedule(keys=[TIMERS_KEY], args=[CONV_INDEX_PREFIX, *args], client=pipe)
        pipe.execute()

    def pop_due(self, now: datetime, limit: int = 500) -> list[DueTimer]:
        """Remove and return up to `limit` timers due at or before `now`, earliest first."""
        flat = self._pop(keys=[TIMERS_KEY], args=[repr(to_epoch(now)), limit, CONV_INDEX_PREFIX])
        out = []
        for i in range(0, len(flat), 2):
            rule_id, _, conv = _text(flat[i]).rpartition(SEPARATOR)
            out.append(DueTimer(rule_id, int(conv), from_epoch(float(flat[i + 1]))))
        return out

    def due_at(self, rule_id: str, conversation_id: int) -> datetime | None:
        score = self._redis.zscore(TIMERS_KEY, _member(rule_id, conversation_id))
        return None if score is None else from_epoch(score)

    def for_conversation(self, conversation_id: int) -> set[str]:
        """Rule ids that have a timer for the conversation."""
        return {_text(r) for r in self._redis.smembers(_index(conversation_id))}

    def backlog(self, now: datetime) -> int:
        """How many timers are due (at or before `now`) and not yet popped."""
        return int(self._redis.zcount(TIMERS_KEY, "-inf", repr(to_epoch(now))))

    def lateness(self, now: datetime) -> float:
        """Seconds the oldest due timer is overdue (0.0 when nothing is due)."""
        first = self._redis.zrange(TIMERS_KEY, 0, 0, withscores=True)
        if not first:
            return 0.0
        return max(0.0, to_epoch(now) - float(first[0][1]))

    def next_due(self) -> datetime | None:
        first = self._redis.zrange(TIMERS_KEY, 0, 0, withscores=True)
        return from_epoch(float(first[0][1])) if first else None

    def __len__(self) -> int:
        return int(self._redis.zcard(TIMERS_KEY))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
