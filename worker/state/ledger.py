"""The idempotency ledger: one Redis record per firing, claimed atomically.

A *firing key* (``"rule_id:conversation_id:situation"``, made by the rules
evaluator) names one thing the worker must do exactly once. The scheduler
claims the key *before* it enqueues (``claim``: only the first claimer wins, so
replicas, overlapping ticks and resyncs never enqueue a firing twice); the actor
records a recovery point before each HTTP call (``begin_attempt``) and the final
outcome after it (``mark_done`` / ``mark_failed``). A claim that never finishes
(scheduler died between claim and enqueue, broker lost or delayed the message)
stays in the re-drive set and is handed back by ``due_redrives`` so the worker
re-enqueues it: lost firings = 0 needs this as much as duplicates = 0 needs the
claim.

Redis keys (all under ``inboxpilot:``):

=====================================  ======  ====================================================
key                                    type    content / TTL
=====================================  ======  ====================================================
``inboxpilot:ledger:<firing key>``     HASH    state, attempts, claimed_at, updated_at, payload,
                                               owner, rule_id, conversation_id, redrives, reason,
                                               outcome; TTL ``ledger_ttl_s`` (refreshed on change)
``inboxpilot:ledger:redrive``          ZSET    pending firing keys scored by "re-drive at" epoch;
                                               no TTL (members leave on done/failed/expiry)
``inboxpilot:ledger:count:<r>:<c>``    STRING  firings claimed for rule ``r`` on conversation ``c``;
                                               TTL ``ledger_ttl_s``
``inboxpilot:ledger:hourly:<r>``       ZSET    firing keys of rule ``r`` scored by claim epoch,
                                               trimmed to the last hour; TTL 1 h after last claim
``inboxpilot:audit``                   STREAM  one entry per final outcome (done / failed);
                                               capped with ``MAXLEN ~ AUDIT_MAXLEN``
=====================================  ======  ====================================================

Timestamps are stored as epoch seconds (floats) and read back as aware UTC
datetimes. Every multi-key change is one Lua script, so a crash never leaves a
half-written claim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import redis

from worker.clock import Clock, from_epoch, to_epoch
from worker.logs import get_logger
from worker.metrics import LEDGER_DEDUPES
from worker.rules.firing import split_firing_key

PREFIX = "inboxpilot:"
ENTRY_PREFIX = f"{PREFIX}ledger:"
REDRIVE_KEY = f"{PREFIX}ledger:redrive"
COUNT_PREFIX = f"{PREFIX}ledger:count:"
HOURLY_PREFIX = f"{PREFIX}ledger:hourly:"
AUDIT_STREAM = f"{PREFIX}audit"

AUDIT_MAXLEN = 100_000
HOUR_S = 3600
# Longer than one actor attempt (TimeLimit 60 s) plus the largest retry backoff
# (60 s) with margin, so a firing that is merely retrying is not re-driven;
# each begin_attempt pushes the re-drive time again.
DEFAULT_REDRIVE_AFTER_S = 180.0
# After this many re-drives a firing is failed with reason "redrive_limit"
# instead of looping forever (a poisoned firing must end, visibly).
DEFAULT_MAX_REDRIVES = 5
# Re-drives of the final "read back, then fail" delivery before failing without one.
VERDICT_REDRIVES = 3

State = Literal["pending", "done", "failed"]
log = get_logger(__name__)


@dataclass(frozen=True)
class LedgerEntry:
    """One firing as recorded in Redis."""

    key: str
    state: State
    attempts: int
    claimed_at: datetime
    updated_at: datetime
    payload: dict[str, Any]
    owner: str = ""
    rule_id: str = ""
    conversation_id: str = ""
    redrives: int = 0
    reason: str = ""
    outcome: dict[str, Any] = field(default_factory=dict)


_CLAIM = """
-- KEYS: entry, redrive, count, hourly
-- ARGV: key, payload, now, redrive_at, ttl, owner, rule_id, conv_id, hour_cutoff
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('hset', KEYS[1], 'state', 'pending', 'attempts', 0, 'claimed_at', ARGV[3],
  'updated_at', ARGV[3], 'payload', ARGV[2], 'owner', ARGV[6], 'rule_id', ARGV[7],
  'conversation_id', ARGV[8], 'redrives', 0)
redis.call('expire', KEYS[1], ARGV[5])
redis.call('zadd', KEYS[2], ARGV[4], ARGV[1])
redis.call('incr', KEYS[3])
redis.call('expire', KEYS[3], ARGV[5])
redis.call('zadd', KEYS[4], ARGV[3], ARGV[1])
redis.call('zremrangebyscore', KEYS[4], '-inf', '(' .. ARGV[9])
redis.call('expire', KEYS[4], 3600)
return 1
"""

_BEGIN_ATTEMPT = """
-- KEYS: entry, redrive   ARGV: key, now, redrive_at, ttl
if redis.call('hget', KEYS[1], 'state') ~= 'pending' then return {0, 0} end
local n = redis.call('hincrby', KEYS[1], 'attempts', 1)
redis.call('hset', KEYS[1], 'updated_at', ARGV[2])
redis.call('expire', KEYS[1], ARGV[4])
redis.call('zadd', KEYS[2], ARGV[3], ARGV[1])
return {n, tonumber(redis.call('hget', KEYS[1], 'verdict') or '0')}
"""

_FINISH = """
-- KEYS: entry, redrive, audit
-- ARGV: key, state, now, ttl, field, value, maxlen
if redis.call('hget', KEYS[1], 'state') ~= 'pending' then return 0 end
redis.call('hset', KEYS[1], 'state', ARGV[2], 'updated_at', ARGV[3], ARGV[5], ARGV[6])
redis.call('expire', KEYS[1], ARGV[4])
redis.call('zrem', KEYS[2], ARGV[1])
local e = redis.call('hmget', KEYS[1], 'rule_id', 'conversation_id', 'attempts')
redis.call('xadd', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'key', ARGV[1], 'state', ARGV[2],
  'rule_id', e[1] or '', 'conversation_id', e[2] or '', 'attempts', e[3] or '0',
  ARGV[5], ARGV[6], 'at', ARGV[3])
return 1
"""

_DUE_REDRIVES = """
-- KEYS: redrive, audit, then the broker's message hashes (queued, delayed)
-- ARGV: now, limit, next_at, max_redrives, entry_prefix, maxlen, verdict_redrives
local keys = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, key in ipairs(keys) do
  local entry = ARGV[5] .. key
  local e = redis.call('hmget', entry, 'state', 'payload', 'redrives', 'rule_id', 'conversation_id',
    'attempts', 'msg')
  local queued = false
  if e[7] then
    for i = 3, #KEYS do
      if redis.call('hexists', KEYS[i], e[7]) == 1 then queued = true end
    end
  end
  local redrives = tonumber(e[3] or '0')
  if e[1] ~= 'pending' then
    redis.call('zrem', KEYS[1], key)
  elseif queued then
    -- Its message is still queued, delayed or in a worker's hands: behind a backlog, not lost.
    redis.call('zadd', KEYS[1], ARGV[3], key)
  elseif redrives >= tonumber(ARGV[4]) + tonumber(ARGV[7]) then
    -- Even the read-back-before-failing messages were lost: end it, visibly.
    redis.call('zrem', KEYS[1], key)
    redis.call('hset', entry, 'state', 'failed', 'reason', 'redrive_limit', 'updated_at', ARGV[1])
    redis.call('xadd', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'key', key, 'state', 'failed',
      'rule_id', e[4] or '', 'conversation_id', e[5] or '', 'attempts', e[6] or '0',
      'reason', 'redrive_limit', 'at', ARGV[1])
    table.insert(out, key)
    table.insert(out, '')
  else
    if redrives >= tonumber(ARGV[4]) then
      -- Out of re-drives: one more delivery that reads back and re-checks, then ends it.
      redis.call('hset', entry, 'verdict', 1)
    end
    redis.call('hincrby', entry, 'redrives', 1)
    redis.call('zadd', KEYS[1], ARGV[3], key)
    table.insert(out, key)
    table.insert(out, e[2])
  end
end
return out
"""

_NOTE_QUEUED = """
-- KEYS: entries   ARGV: message ref
for _, entry in ipairs(KEYS) do
  if redis.call('hget', entry, 'state') == 'pending' then redis.call('hset', entry, 'msg', ARGV[1]) end
end
return 1
"""

_REOPEN = """
-- KEYS: entry, redrive   ARGV: key, now, redrive_at, ttl
if redis.call('hget', KEYS[1], 'state') ~= 'failed' then return 0 end
redis.call('hset', KEYS[1], 'state', 'pending', 'redrives', 0, 'updated_at', ARGV[2], 'reason', '')
redis.call('expire', KEYS[1], ARGV[4])
redis.call('zadd', KEYS[2], ARGV[3], ARGV[1])
return 1
"""


class Ledger:
    """Exactly-once bookkeeping for firings, in Redis (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        clock: Clock,
        *,
        ttl_s: int,
        redrive_after_s: float = DEFAULT_REDRIVE_AFTER_S,
        max_redrives: int = DEFAULT_MAX_REDRIVES,
        audit_maxlen: int = AUDIT_MAXLEN,
    ) -> None:
        if ttl_s <= 0 or redrive_after_s <= 0 or max_redrives < 1:
            raise ValueError("Ledger needs ttl_s > 0, redrive_after_s > 0 and max_redrives >= 1")
        self._redis = client
        self._clock = clock
        self.ttl_s = ttl_s
        self.redrive_after_s = redrive_after_s
        self.max_redrives = max_redrives
        self._audit_maxlen = audit_maxlen
        self._claim = client.register_script(_CLAIM)
        self._begin = client.register_script(_BEGIN_ATTEMPT)
        self._finish = client.register_script(_FINISH)
        self._due = client.register_script(_DUE_REDRIVES)
        self._reopen = client.register_script(_REOPEN)
        self._note_queued = client.register_script(_NOTE_QUEUED)
        # The broker's message hashes on this Redis (set by the app when the broker is
        # the Redis one here): a pending item whose message is in one is queued, not lost.
        self.queued_in: tuple[str, ...] = ()

    def _now(self, now: datetime | None) -> float:
        return to_epoch(now or self._clock.now())

    def claim(
        self,
        key: str,
        payload: dict[str, Any],
        now: datetime | None = None,
        *,
        owner: str = "",
        rule_id: str | None = None,
        conversation_id: int | str | None = None,
    ) -> bool:
        """Claim a firing: True only for the first claimer of `key` (within the TTL).

        `payload` is the planned action (JSON-able) so a stuck claim can be
        re-driven; `rule_id`/`conversation_id` default to the key's first parts.
        """
        parsed_rule, parsed_conv = split_firing_key(key)
        rule = rule_id if rule_id is not None else parsed_rule
        conv = str(conversation_id) if conversation_id is not None else parsed_conv
        at = self._now(now)
        won = self._claim(
            keys=[ENTRY_PREFIX + key, REDRIVE_KEY, f"{COUNT_PREFIX}{rule}:{conv}", HOURLY_PREFIX + rule],
            args=[
                key,
                json.dumps(payload, separators=(",", ":"), default=str),
                repr(at),
                repr(at + self.redrive_after_s),
                self.ttl_s,
                owner,
                rule,
                conv,
                repr(at - HOUR_S),
            ],
        )
        if not won:
            LEDGER_DEDUPES.labels(rule=rule).inc()
            log.debug("firing_already_claimed", key=key)
        return bool(won)

    def begin(self, key: str, now: datetime | None = None) -> tuple[int, bool] | None:
        """`begin_attempt`, and whether this is the verdict delivery after the last re-drive.

        A verdict delivery reads back and re-checks like any attempt, but fails the
        item instead of acting (its re-drives ran out; the effect was read back first).
        """
        at = self._now(now)
        n, verdict = self._begin(
            keys=[ENTRY_PREFIX + key, REDRIVE_KEY],
            args=[key, repr(at), repr(at + self.redrive_after_s), self.ttl_s],
        )
        return (int(n), bool(int(verdict))) if int(n) else None

    def note_queued(self, keys: list[str], message_ref: str) -> None:
        """These pending items are now carried by broker message `message_ref` (enqueued or requeued)."""
        if keys:
            self._note_queued(keys=[ENTRY_PREFIX + key for key in keys], args=[message_ref])

    def begin_attempt(self, key: str, now: datetime | None = None) -> int | None:
        """Record a recovery point before an API call; returns the attempt number (1, 2, ...).

        None means the firing is not pending (already done/failed, or unknown):
        the caller must not act. An attempt number > 1 means an earlier attempt
        may have been applied: reconcile (read back) before resending.
        """
        begun = self.begin(key, now)
        return begun[0] if begun is not None else None

    def mark_done(self, key: str, outcome: dict[str, Any] | None = None, now: datetime | None = None) -> bool:
        """Record success; False when the firing was not pending (nothing changed, no audit line)."""
        value = json.dumps(outcome or {}, separators=(",", ":"), default=str)
        return self._finish_as(key, "done", "outcome", value, now)

    def mark_failed(self, key: str, reason: str, now: datetime | None = None) -> bool:
        """Record a final failure with a reason; False when the firing was not pending."""
        return self._finish_as(key, "failed", "reason", reason, now)

    def _finish_as(self, key: str, state: State, fld: str, value: str, now: datetime | None) -> bool:
        done = self._finish(
            keys=[ENTRY_PREFIX + key, REDRIVE_KEY, AUDIT_STREAM],
            args=[key, state, repr(self._now(now)), self.ttl_s, fld, value, self._audit_maxlen],
        )
        if done:
            log.debug("firing_finished", key=key, state=state)  # execution logs the firing once
        return bool(done)

    def reopen(self, key: str, now: datetime | None = None) -> bool:
        """Put a failed firing back to pending (e.g. a dead letter retried by an operator)."""
        at = self._now(now)
        return bool(
            self._reopen(
                keys=[ENTRY_PREFIX + key, REDRIVE_KEY],
                args=[key, repr(at), repr(at + self.redrive_after_s), self.ttl_s],
            )
        )

    def due_redrives(self, now: datetime | None = None, limit: int = 100) -> list[tuple[str, dict[str, Any]]]:
        """Pending claims past their re-drive time, as (key, payload), rescheduled atomically.

        Each returned firing must be re-enqueued by the caller; it comes back
        again after `redrive_after_s` if still pending. A firing whose message is
        still in the broker (`queued_in`: queued behind a backlog, delayed for a
        retry, in a worker's hands) is not lost: its time is pushed back and no
        re-drive is spent. After `max_redrives` re-drives the next delivery is a
        verdict (`begin`): it reads back and fails the item only when the effect is
        not there; only when that too is lost `VERDICT_REDRIVES` times is the item
        failed here with reason ``redrive_limit``.
        """
        at = self._now(now)
        flat = self._due(
            keys=[REDRIVE_KEY, AUDIT_STREAM, *self.queued_in],
            args=[
                repr(at),
                limit,
                repr(at + self.redrive_after_s),
                self.max_redrives,
                ENTRY_PREFIX,
                self._audit_maxlen,
                VERDICT_REDRIVES,
            ],
        )
        raw = [(_text(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2)]
        for key, _ in (pair for pair in raw if not pair[1]):  # failed by the script: say so
            log.warning("firing_failed", key=key, reason="redrive_limit", redrives=self.max_redrives)
        pairs = [(key, json.loads(payload)) for key, payload in raw if payload]
        if pairs:
            log.warning("firings_redriven", count=len(pairs))
        return pairs

    def get(self, key: str) -> LedgerEntry | None:
        raw = self._redis.hgetall(ENTRY_PREFIX + key)
        if not raw:
            return None
        data = {_text(k): _text(v) for k, v in raw.items()}
        return LedgerEntry(
            key=key,
            state=data["state"],  # type: ignore[arg-type]  # written only by our scripts
            attempts=int(data.get("attempts", "0")),
            claimed_at=from_epoch(float(data["claimed_at"])),
            updated_at=from_epoch(float(data["updated_at"])),
            payload=json.loads(data.get("payload") or "{}"),
            owner=data.get("owner", ""),
            rule_id=data.get("rule_id", ""),
            conversation_id=data.get("conversation_id", ""),
            redrives=int(data.get("redrives", "0")),
            reason=data.get("reason", ""),
            outcome=json.loads(data.get("outcome") or "{}"),
        )

    def known(self, keys: list[str]) -> set[str]:
        """The subset of `keys` already claimed (any state), in one round trip."""
        if not keys:
            return set()
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.exists(ENTRY_PREFIX + key)
        return {key for key, exists in zip(keys, pipe.execute(), strict=True) if exists}

    def is_done(self, key: str) -> bool:
        return self._redis.hget(ENTRY_PREFIX + key, "state") == b"done"

    def pending_count(self) -> int:
        """Claims not yet finished (the size of the re-drive set)."""
        return int(self._redis.zcard(REDRIVE_KEY))

    def count_for(self, rule_id: str, conversation_id: int | str) -> int:
        """Firings claimed for a rule on one conversation (within the ledger TTL)."""
        value = self._redis.get(f"{COUNT_PREFIX}{rule_id}:{conversation_id}")
        return int(value) if value else 0

    def count_last_hour(self, rule_id: str, now: datetime | None = None) -> int:
        """Firings claimed for a rule in the hour up to `now`."""
        at = self._now(now)
        return int(self._redis.zcount(HOURLY_PREFIX + rule_id, f"({at - HOUR_S!r}", repr(at)))


def read_audit(client: redis.Redis, count: int | None = None) -> list[dict[str, str]]:
    """The audit stream's entries, oldest first, as plain string dicts (with the stream id as "id")."""
    entries = client.xrange(AUDIT_STREAM, count=count) or []
    return [
        {"id": _text(eid), **{_text(k): _text(v) for k, v in (fields or {}).items()}}
        for eid, fields in entries
    ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
