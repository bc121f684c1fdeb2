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

A firing is claimed whole (``claim_firing``): one entry per action,
``<firing key>#<position>``, written in one script that also checks the rule's
caps and the assigned agents' capacity. Action 0 is ``pending``; the others are
``waiting`` until the action before them is applied: then the finish script
makes the next one ``pending`` and due for re-drive in the same step (the
executor queues it at once; a worker killed in between only delays it). An
action that ends without being applied ends the rest as skipped.

A step's items begin together (``begin_many``) and finish together
(``finish_items``), one script each: a bulk call's 50 outcomes are one round
trip. A message step finishes each send on its own, before the next send, in one
script that also attributes the sent message to the item (the read-back's proof,
``inboxpilot:sent:<conversation>``, owned by `worker/state/sent.py`): a worker
killed between two sends never sends the first again (tests/test_execution_crash.py).

Redis keys (all under ``inboxpilot:``):

=====================================  ======  ====================================================
key                                    type    content / TTL
=====================================  ======  ====================================================
``inboxpilot:ledger:<item key>``       HASH    state (waiting/pending/done/failed), attempts,
                                               claimed_at, updated_at, payload, owner, rule_id,
                                               conversation_id, redrives, reason, outcome, next
                                               (the next action's key), agent (an assignment's);
                                               TTL ``ledger_ttl_s`` (refreshed on change)
``inboxpilot:ledger:redrive``          ZSET    pending firing keys scored by "re-drive at" epoch;
                                               no TTL (members leave on done/failed/expiry)
``inboxpilot:ledger:count:<r>:<c>``    STRING  firings (not actions) claimed for rule ``r`` on ``c``;
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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Any, Literal

import redis

from worker.clock import Clock, from_epoch, to_epoch
from worker.logs import get_logger
from worker.metrics import LEDGER_DEDUPES
from worker.rules.firing import firing_of, split_firing_key
from worker.state.sent import PREFIX as SENT_PREFIX

PREFIX = "inboxpilot:"
ENTRY_PREFIX = f"{PREFIX}ledger:"
REDRIVE_KEY = f"{PREFIX}ledger:redrive"
COUNT_PREFIX = f"{PREFIX}ledger:count:"
HOURLY_PREFIX = f"{PREFIX}ledger:hourly:"
AUDIT_STREAM = f"{PREFIX}audit"
# An agent's assignments claimed and not yet applied (owned by worker/state/routing.py).
INFLIGHT_PREFIX = f"{PREFIX}routing:inflight:"

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

# "waiting": a later action of a firing, until the action before it is applied.
State = Literal["waiting", "pending", "done", "failed"]
log = get_logger(__name__)


@dataclass(frozen=True)
class BrokerQueues:
    """Where the Redis broker keeps a queue's messages and its workers' unacked ones.

    Lets the re-drive tell an item queued behind a backlog from one whose message
    is gone or sits with a dead worker (dramatiq's Redis layout, see its dispatch.lua).
    """

    message_hashes: tuple[str, ...]  # "<ns>:<queue>.msgs" for the queue and its delay queue
    heartbeats: str  # "<ns>:__heartbeats__": worker id -> last heartbeat (ms)
    acks_prefix: str  # "<ns>:__acks__.": + "<worker id>.<queue>" = a worker's unacked messages
    queue_names: tuple[str, ...]
    heartbeat_timeout_ms: int

    def lua_args(self) -> list[str]:
        cutoff_ms = int(time.time() * 1000) - self.heartbeat_timeout_ms  # dramatiq beats on wall time
        return [self.acks_prefix, str(cutoff_ms), *self.queue_names]


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


class ClaimResult(Enum):
    WON = "won"
    KNOWN = "already claimed"
    CAPPED_CONVERSATION = "max_per_conversation reached"
    CAPPED_HOUR = "max_per_hour reached"
    AT_CAPACITY = "the agent is at capacity"


CLAIM_CODES = {
    1: ClaimResult.WON,
    0: ClaimResult.KNOWN,
    -1: ClaimResult.CAPPED_CONVERSATION,
    -2: ClaimResult.CAPPED_HOUR,
    -3: ClaimResult.AT_CAPACITY,
}


@dataclass(frozen=True)
class ClaimItem:
    """One action of a firing to claim: its item key, its step, and the agent it assigns
    (with that agent's capacity and open load read from the API) when it is an assignment."""

    key: str
    payload: dict[str, Any]
    agent: int | None = None
    capacity: int | None = None
    base_load: int = 0

    def lua_args(self) -> list[Any]:
        return [
            self.key,
            json.dumps(self.payload, separators=(",", ":"), default=str),
            "" if self.agent is None else str(self.agent),
            "" if self.capacity is None else str(self.capacity),
            self.base_load,
        ]


@dataclass(frozen=True)
class FiringClaim:
    """A firing's actions, in order, and the caps its claim must respect."""

    key: str
    items: Sequence[ClaimItem]
    owner: str = ""
    rule_id: str | None = None
    conversation_id: str | None = None
    max_per_conversation: int | None = None
    max_per_hour: int | None = None
    # When the agents' base loads were read: assignments applied since count as in flight.
    load_since: datetime | None = None

    def rule_and_conversation(self) -> tuple[str, str]:
        rule, conv = split_firing_key(self.key)
        return (self.rule_id or rule, self.conversation_id or conv)


@dataclass(frozen=True)
class Finished:
    """What finishing an item did: whether it was pending, the next action now pending, and
    the later actions ended as skipped."""

    changed: bool
    next_key: str | None = None
    skipped: tuple[str, ...] = ()


_CHAIN_LUA = """
local function settle_agent(entry, key, applied, now, inflight_prefix)
  local agent = redis.call('hget', entry, 'agent')
  if agent then
    if applied then redis.call('zadd', inflight_prefix .. agent, now, key)
    else redis.call('zrem', inflight_prefix .. agent, key) end
  end
end
local function cascade(entry, prefix, inflight_prefix, now, ttl, outcome, audit, maxlen)
  local out = {}
  local nxt = redis.call('hget', entry, 'next')
  while nxt do
    local e = prefix .. nxt
    if redis.call('hget', e, 'state') ~= 'waiting' then break end
    redis.call('hset', e, 'state', 'done', 'updated_at', now, 'outcome', outcome)
    redis.call('expire', e, ttl)
    settle_agent(e, nxt, false, now, inflight_prefix)
    local f = redis.call('hmget', e, 'rule_id', 'conversation_id')
    redis.call('xadd', audit, 'MAXLEN', '~', maxlen, '*', 'key', nxt, 'state', 'done',
      'rule_id', f[1] or '', 'conversation_id', f[2] or '', 'attempts', '0', 'outcome', outcome, 'at', now)
    table.insert(out, nxt)
    nxt = redis.call('hget', e, 'next')
  end
  return out
end
"""

# A pending assignment's score in an agent's in-flight set: above every "done at" epoch.
PENDING_SCORE = "1e15"
ITEM_ARGS = 5  # per item: key, payload, agent, capacity, base load

_CLAIM_FIRING = f"""
-- KEYS: redrive, count, hourly
-- ARGV: firing, now, redrive_at, ttl, owner, rule, conv, hour_cutoff, max_conv, max_hour,
--       entry_prefix, inflight_prefix, load_since, n, then {ITEM_ARGS} per item:
--       key, payload, agent ('' = none), capacity ('' = none), base load
-- Returns 1 won, 0 already claimed, -1 max_per_conversation, -2 max_per_hour, -3 at capacity.
local n, base, W = tonumber(ARGV[14]), 14, {ITEM_ARGS}
local function arg(i, j) return ARGV[base + i * W + j] end
for i = 0, n - 1 do
  if redis.call('exists', ARGV[11] .. arg(i, 1)) == 1 then return 0 end
end
local max_conv = tonumber(ARGV[9])
if max_conv > 0 and tonumber(redis.call('get', KEYS[2]) or '0') >= max_conv then return -1 end
redis.call('zremrangebyscore', KEYS[3], '-inf', '(' .. ARGV[8])
local max_hour = tonumber(ARGV[10])
if max_hour > 0 and redis.call('zcard', KEYS[3]) >= max_hour then return -2 end
for i = 0, n - 1 do
  local agent, cap = arg(i, 3), arg(i, 4)
  if agent ~= '' then
    local inflight = ARGV[12] .. agent
    redis.call('zremrangebyscore', inflight, '-inf', '(' .. (tonumber(ARGV[2]) - 600))
    if cap ~= '' then
      local load = tonumber(arg(i, 5)) + redis.call('zcount', inflight, ARGV[13], '+inf')
      if load >= tonumber(cap) then return -3 end
    end
  end
end
for i = 0, n - 1 do
  local key = arg(i, 1)
  local entry = ARGV[11] .. key
  local state = 'waiting'
  if i == 0 then state = 'pending' end
  redis.call('hset', entry, 'state', state, 'attempts', 0, 'claimed_at', ARGV[2],
    'updated_at', ARGV[2], 'payload', arg(i, 2), 'owner', ARGV[5], 'rule_id', ARGV[6],
    'conversation_id', ARGV[7], 'redrives', 0)
  if i + 1 < n then redis.call('hset', entry, 'next', arg(i + 1, 1)) end
  if arg(i, 3) ~= '' then
    redis.call('hset', entry, 'agent', arg(i, 3))
    redis.call('zadd', ARGV[12] .. arg(i, 3), {PENDING_SCORE}, key)
  end
  redis.call('expire', entry, ARGV[4])
end
redis.call('zadd', KEYS[1], ARGV[3], arg(0, 1))
redis.call('incr', KEYS[2])
redis.call('expire', KEYS[2], ARGV[4])
redis.call('zadd', KEYS[3], ARGV[2], ARGV[1])
redis.call('expire', KEYS[3], 3600)
return 1
"""

_BEGIN_MANY = """
-- KEYS: redrive   ARGV: now, redrive_at, ttl, entry_prefix, then the item keys
-- Returns per item: attempt number (0: not pending, do not act), verdict flag.
local unpack = unpack or table.unpack
local out, due = {}, {}
for i = 5, #ARGV do
  local entry = ARGV[4] .. ARGV[i]
  local e = redis.call('hmget', entry, 'state', 'verdict')
  if e[1] ~= 'pending' then
    table.insert(out, 0)
    table.insert(out, 0)
  else
    table.insert(out, redis.call('hincrby', entry, 'attempts', 1))
    table.insert(out, tonumber(e[2] or '0'))
    redis.call('hset', entry, 'updated_at', ARGV[1])
    redis.call('expire', entry, ARGV[3])
    table.insert(due, ARGV[2])
    table.insert(due, ARGV[i])
  end
end
for j = 1, #due, 1000 do redis.call('zadd', KEYS[1], unpack(due, j, math.min(j + 999, #due))) end
return out
"""

FINISH_ARGS = 8  # per item: key, state, field, value, advance, later outcome, sent hash, message id

_FINISH_MANY = (
    _CHAIN_LUA
    + f"""
-- KEYS: redrive, audit
-- ARGV: now, ttl, maxlen, entry_prefix, inflight_prefix, redrive_at, n, then {FINISH_ARGS} per item:
--       key, state, field, value, advance ('1': the action was applied), outcome of the later
--       actions when not advancing, the sent-messages hash ('' = none) and the message id the
--       item sent (attributed to it in the same script as its outcome)
-- Returns per item {{0}} when it was not pending, else {{1, next key queued or '', skipped keys...}}.
local unpack = unpack or table.unpack
local now, ttl, maxlen, prefix, inflight = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local n, W = tonumber(ARGV[7]), {FINISH_ARGS}
local out, done = {{}}, {{}}
for i = 0, n - 1 do
  local b = 7 + i * W
  local key, state, fld, value = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local entry = prefix .. key
  local e = redis.call('hmget', entry, 'state', 'rule_id', 'conversation_id', 'attempts', 'agent', 'next')
  local r = {{0}}
  if e[1] == 'pending' then
    r = {{1, ''}}
    redis.call('hset', entry, 'state', state, 'updated_at', now, fld, value)
    redis.call('expire', entry, ttl)
    table.insert(done, key)
    redis.call('xadd', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'key', key, 'state', state,
      'rule_id', e[2] or '', 'conversation_id', e[3] or '', 'attempts', e[4] or '0',
      fld, value, 'at', now)
    local applied = ARGV[b + 5] == '1'
    if e[5] then
      if applied then redis.call('zadd', inflight .. e[5], now, key)
      else redis.call('zrem', inflight .. e[5], key) end
    end
    if ARGV[b + 7] ~= '' then
      redis.call('hset', ARGV[b + 7], ARGV[b + 8], key)
      redis.call('expire', ARGV[b + 7], ttl)
    end
    if applied then
      local nxt = e[6]
      if nxt and redis.call('hget', prefix .. nxt, 'state') == 'waiting' then
        -- In the re-drive set in the same script: a worker killed before it queues the next
        -- action cannot lose it.
        redis.call('hset', prefix .. nxt, 'state', 'pending', 'updated_at', now)
        redis.call('zadd', KEYS[1], ARGV[6], nxt)
        r = {{1, nxt}}
      end
    else
      for _, k in ipairs(cascade(entry, prefix, inflight, now, ttl, ARGV[b + 6], KEYS[2], maxlen)) do
        table.insert(r, k)
      end
    end
  end
  out[i + 1] = r
end
for j = 1, #done, 1000 do redis.call('zrem', KEYS[1], unpack(done, j, math.min(j + 999, #done))) end
return out
"""
)

_DUE_REDRIVES = (
    _CHAIN_LUA
    + """
-- KEYS: redrive, audit, then (when the broker is known) its heartbeats and message hashes
-- ARGV: now, limit, next_at, max_redrives, entry_prefix, maxlen, verdict_redrives,
--       inflight_prefix, outcome of the later actions, ttl,
--       then acks prefix, dead-worker heartbeat cutoff (ms), queue names...
local keys = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local dead = {}
if #KEYS > 3 then dead = redis.call('zrangebyscore', KEYS[3], 0, ARGV[12]) end
local function in_dead_hands(msg)
  for _, worker in ipairs(dead) do
    for i = 13, #ARGV do
      if redis.call('sismember', ARGV[11] .. worker .. '.' .. ARGV[i], msg) == 1 then return true end
    end
  end
  return false
end
local out = {}
for _, key in ipairs(keys) do
  local entry = ARGV[5] .. key
  local e = redis.call('hmget', entry, 'state', 'payload', 'redrives', 'rule_id', 'conversation_id',
    'attempts', 'msg')
  -- Queued: never started, its message still in the broker and not held by a dead worker
  -- (the broker requeues those only when its maintenance happens to run). Started items
  -- keep the time rule: begin_attempt pushes their re-drive time.
  local queued = false
  if e[7] and tonumber(e[6] or '0') == 0 then
    for i = 4, #KEYS do
      if redis.call('hexists', KEYS[i], e[7]) == 1 then queued = true end
    end
    if queued and in_dead_hands(e[7]) then queued = false end
  end
  local redrives = tonumber(e[3] or '0')
  if e[1] ~= 'pending' then
    redis.call('zrem', KEYS[1], key)
  elseif queued then
    -- Its message waits in the broker behind a backlog: queued, not lost.
    redis.call('zadd', KEYS[1], ARGV[3], key)
  elseif redrives >= tonumber(ARGV[4]) + tonumber(ARGV[7]) then
    -- Even the read-back-before-failing messages were lost: end it, visibly.
    redis.call('zrem', KEYS[1], key)
    redis.call('hset', entry, 'state', 'failed', 'reason', 'redrive_limit', 'updated_at', ARGV[1])
    redis.call('xadd', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'key', key, 'state', 'failed',
      'rule_id', e[4] or '', 'conversation_id', e[5] or '', 'attempts', e[6] or '0',
      'reason', 'redrive_limit', 'at', ARGV[1])
    settle_agent(entry, key, false, ARGV[1], ARGV[8])
    cascade(entry, ARGV[5], ARGV[8], ARGV[1], ARGV[10], ARGV[9], KEYS[2], ARGV[6])
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
)

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
        self._claim_firing = client.register_script(_CLAIM_FIRING)
        self._begin_many = client.register_script(_BEGIN_MANY)
        self._finish_many = client.register_script(_FINISH_MANY)
        self._due = client.register_script(_DUE_REDRIVES)
        self._reopen = client.register_script(_REOPEN)
        self._note_queued = client.register_script(_NOTE_QUEUED)
        # The Redis broker's queues on this Redis (set by the app when the broker lives
        # here): a never-started item whose message waits in one is queued, not lost.
        self.queued_in: BrokerQueues | None = None

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
        """Claim a one-action firing: True only for the first claimer of `key` (within the TTL).

        `payload` is the planned action (JSON-able) so a stuck claim can be
        re-driven; `rule_id`/`conversation_id` default to the key's first parts.
        """
        firing = FiringClaim(firing_of(key), (ClaimItem(key, payload),), owner=owner)
        if rule_id is not None:
            firing = replace(firing, rule_id=rule_id)
        if conversation_id is not None:
            firing = replace(firing, conversation_id=str(conversation_id))
        return self.claim_firing(firing, now) is ClaimResult.WON

    def claim_firing(self, firing: FiringClaim, now: datetime | None = None) -> ClaimResult:
        """Claim every action of a firing at once, its caps and agents' capacity checked in the
        same script: two ticks or two replicas can never both pass a cap.

        Action 0 is pending (queued by the caller, re-driven if lost); the others wait
        until the action before them is applied (`finish_item`)."""
        at = self._now(now)
        rule, conv = firing.rule_and_conversation()
        args: list[Any] = [
            firing.key,
            repr(at),
            repr(at + self.redrive_after_s),
            self.ttl_s,
            firing.owner,
            rule,
            conv,
            repr(at - HOUR_S),
            firing.max_per_conversation or 0,
            firing.max_per_hour or 0,
            ENTRY_PREFIX,
            INFLIGHT_PREFIX,
            repr(to_epoch(firing.load_since) if firing.load_since else at),
            len(firing.items),
        ]
        for item in firing.items:
            args.extend(item.lua_args())
        code = int(
            self._claim_firing(
                keys=[REDRIVE_KEY, f"{COUNT_PREFIX}{rule}:{conv}", HOURLY_PREFIX + rule], args=args
            )
        )
        result = CLAIM_CODES[code]
        if result is ClaimResult.KNOWN:
            LEDGER_DEDUPES.labels(rule=rule).inc()
            log.debug("firing_already_claimed", key=firing.key)
        return result

    def begin(self, key: str, now: datetime | None = None) -> tuple[int, bool] | None:
        """`begin_attempt`, and whether this is the verdict delivery after the last re-drive.

        A verdict delivery reads back and re-checks like any attempt, but fails the
        item instead of acting (its re-drives ran out; the effect was read back first).
        """
        return self.begin_many([key], now)[0]

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

    def begin_many(self, keys: Sequence[str], now: datetime | None = None) -> list[tuple[int, bool] | None]:
        """`begin` for every item of a step in one round trip (one script: a step's items begin
        together or not at all)."""
        if not keys:
            return []
        at = self._now(now)
        flat = self._begin_many(
            keys=[REDRIVE_KEY],
            args=[repr(at), repr(at + self.redrive_after_s), self.ttl_s, ENTRY_PREFIX, *keys],
        )
        pairs = zip(flat[0::2], flat[1::2], strict=True)
        return [(int(n), bool(int(verdict))) if int(n) else None for n, verdict in pairs]

    def mark_done(self, key: str, outcome: dict[str, Any] | None = None, now: datetime | None = None) -> bool:
        """Record success; False when the item was not pending (nothing changed, no audit line).

        An outcome whose result is "done" (applied) hands on to the firing's next action;
        any other result ("skipped") ends the later actions as skipped."""
        return self.finish_item(key, "done", outcome or {}, now).changed

    def mark_failed(self, key: str, reason: str, now: datetime | None = None) -> bool:
        """Record a final failure with a reason; False when the item was not pending."""
        return self.finish_item(key, "failed", {"reason": reason}, now).changed

    def finish_item(
        self, key: str, state: State, detail: dict[str, Any], now: datetime | None = None
    ) -> Finished:
        """Record an item's final state; the firing's next action becomes pending (and due for
        re-drive) in the same script when this one was applied, else the rest are skipped."""
        return self.finish_items([(key, state, detail)], now)[0]

    def finish_items(
        self,
        outcomes: Sequence[tuple[str, State, dict[str, Any]]],
        now: datetime | None = None,
        *,
        sent: Mapping[str, tuple[int, str]] | None = None,
    ) -> list[Finished]:
        """`finish_item` for many items in one round trip (one script: all or none).

        `sent` maps an item key to the (conversation id, message id) it sent: the message
        is attributed to the item (`worker/state/sent.py`) in the same script as its
        outcome, so a send costs one round trip and never has one without the other."""
        if not outcomes:
            return []
        at = self._now(now)
        args: list[Any] = [
            repr(at), self.ttl_s, self._audit_maxlen, ENTRY_PREFIX, INFLIGHT_PREFIX,
            repr(at + self.redrive_after_s), len(outcomes),
        ]  # fmt: skip
        encoded: dict[int, str] = {}  # a bulk call's 50 items share one detail: encode it once
        for key, state, detail in outcomes:
            conversation_id, message_id = (sent or {}).get(key, ("", ""))
            args += self._finish_args(key, state, detail, encoded)
            args += [f"{SENT_PREFIX}{conversation_id}" if message_id else "", message_id]
        raw = self._finish_many(keys=[REDRIVE_KEY, AUDIT_STREAM], args=args)
        return [self._finished(r) for r in raw]

    def _finish_args(
        self, key: str, state: State, detail: dict[str, Any], encoded: dict[int, str]
    ) -> list[Any]:
        applied = state == "done" and detail.get("result", "done") == "done"
        if state == "failed":
            fld, value = "reason", str(detail.get("reason", "failed"))
            why = f"failed: {value}"
        else:
            fld = "outcome"
            value = encoded.get(id(detail)) or json.dumps(detail, separators=(",", ":"), default=str)
            encoded[id(detail)] = value
            why = f"{detail.get('result', 'done')}: {detail.get('reason', '')}".rstrip(": ")
        later = ""  # the later actions' outcome, only read when this action was not applied
        if not applied:
            reason = f"not run: an earlier action of the firing ({key}) {why}"
            later = json.dumps({"result": "skipped", "reason": reason}, separators=(",", ":"))
        return [key, state, fld, value, "1" if applied else "0", later]

    @staticmethod
    def _finished(raw: Any) -> Finished:
        # Execution logs each outcome (worker/execution/runs.py); nothing to log here.
        if not int(raw[0]):
            return Finished(False)
        nxt = _text(raw[1]) or None
        return Finished(True, nxt, tuple(_text(k) for k in raw[2:]))

    def payloads(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The stored steps of `keys` (those that still exist), in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hget(ENTRY_PREFIX + key, "payload")
        return {k: json.loads(_text(v)) for k, v in zip(keys, pipe.execute(), strict=True) if v}

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
        again after `redrive_after_s` if still pending. A firing that never started
        and whose message still waits in the broker (`queued_in`: queued behind a
        backlog, or prefetched by a live worker) is not lost: its time is pushed
        back and no re-drive is spent. After `max_redrives` re-drives the next delivery is a
        verdict (`begin`): it reads back and fails the item only when the effect is
        not there; only when that too is lost `VERDICT_REDRIVES` times is the item
        failed here with reason ``redrive_limit``.
        """
        at = self._now(now)
        broker = self.queued_in
        flat = self._due(
            keys=[
                REDRIVE_KEY,
                AUDIT_STREAM,
                *((broker.heartbeats, *broker.message_hashes) if broker else ()),
            ],
            args=[
                repr(at),
                limit,
                repr(at + self.redrive_after_s),
                self.max_redrives,
                ENTRY_PREFIX,
                self._audit_maxlen,
                VERDICT_REDRIVES,
                INFLIGHT_PREFIX,
                json.dumps(
                    {"result": "skipped", "reason": "not run: an earlier action failed (redrive_limit)"}
                ),
                self.ttl_s,
                *(broker.lua_args() if broker else ()),
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
