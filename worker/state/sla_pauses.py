"""The SLA pause record: what the loop saw of each conversation's pauses, kept in Redis.

The API record shows only the current pause; the loop calls `observe` for every
conversation it evaluates, which opens or closes a pause interval per policy
(`worker.rules.sla.update_pauses`) and returns the intervals; the snapshot reader
puts them in each `Snapshot` (`sla_pauses`) so the (pure) SLA condition can skip
earlier pauses.
Rule sets without pausing policies cost nothing here.

======================================  ====  ============================================
key                                     type  content / TTL
======================================  ====  ============================================
``inboxpilot:sla:pauses:<conv_id>``     HASH  policy name -> JSON ``[[start, end|null]...]``
                                              (ISO 8601, newest last, at most 50); TTL 35 d
                                              from the last change
======================================  ====  ============================================
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import redis

from worker.api.models import Conversation
from worker.rules.context import Interval, Pauses
from worker.rules.model import RuleSet
from worker.rules.sla import SlaPolicy, update_pauses

KEY_PREFIX = "inboxpilot:sla:pauses:"
TTL_S = 35 * 86_400
MAX_INTERVALS = 50


def _decode(raw: bytes | str | None) -> list[Interval]:
    if raw is None:
        return []
    try:
        pairs = json.loads(raw)
        return [
            (datetime.fromisoformat(a), None if b is None else datetime.fromisoformat(b)) for a, b in pairs
        ]
    except (ValueError, TypeError):
        return []  # a damaged record: start again from what the record shows


def _encode(intervals: Sequence[Interval]) -> str:
    kept = list(intervals)[-MAX_INTERVALS:]
    return json.dumps([[a.isoformat(), None if b is None else b.isoformat()] for a, b in kept])


class SlaPauses:
    """Reads and updates the pause record (see the module docstring)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def observe(
        self, ruleset: RuleSet, conversations: Sequence[Conversation], now: datetime
    ) -> dict[int, Pauses]:
        """Update the record from what the conversations show now; their pauses by conversation id."""
        return self._run(ruleset, conversations, now, write=True)

    def read(
        self, ruleset: RuleSet, conversations: Sequence[Conversation], now: datetime
    ) -> dict[int, Pauses]:
        """The record without changing it (the re-check and the read-only commands)."""
        return self._run(ruleset, conversations, now, write=False)

    def _run(
        self, ruleset: RuleSet, conversations: Sequence[Conversation], now: datetime, *, write: bool
    ) -> dict[int, Pauses]:
        policies: list[SlaPolicy] = [p for p in ruleset.sla_policies if isinstance(p, SlaPolicy) and p.pauses]
        if not policies or not conversations:
            return {}
        found: dict[int, Pauses] = {}
        read = self._redis.pipeline(transaction=False)
        for conv in conversations:
            read.hmget(KEY_PREFIX + str(conv.id), [p.id for p in policies])
        stored = read.execute()
        out = self._redis.pipeline(transaction=False)
        for conv, values in zip(conversations, stored, strict=True):
            attached = {}
            for policy, raw in zip(policies, values, strict=True):
                prior = _decode(raw)
                now_intervals = update_pauses(policy, conv, prior, now)
                attached[policy.id] = now_intervals
                if write and now_intervals != prior:
                    key = KEY_PREFIX + str(conv.id)
                    out.hset(key, policy.id, _encode(now_intervals))
                    out.expire(key, TTL_S)
            found[conv.id] = attached
        if write:
            out.execute()
        return found
