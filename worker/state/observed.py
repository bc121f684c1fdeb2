"""Assignment and stage-entry times the worker derives from its own observations.

The documented conversation record (/work/shared/api-contract.md) has `owner_id`
and `pipeline_stage_id` but no `assigned_at` or `stage_entered_at`. Rules need
them (`once: per_assignment` / `per_stage_entry` keys, `assigned_for`,
`in_stage_for`, SLA pauses), so the worker keeps, per conversation, the owner and
stage it last saw and since when; a record that does carry the fields keeps its
own values (the derived ones are used only where the API is silent).

When the worker first sees a change of owner or stage, the change happened
after the previous observation and at or before the record's `updated_at` (any
change bumps it): that `updated_at` is the derived time. It is never earlier than
the truth, so `assigned_for: 1h` never fires early; it may fire up to one poll
interval late. A conversation first seen already assigned counts as assigned at
that first record's `updated_at` (the worker cannot know better). Every replica
and the executor's re-check read the same stored value, so firing keys stay
stable; an unassignment is a new observation, hence a new `per_assignment`
situation and routing acts again.

Redis (one key per conversation, all written by one Lua script per batch):

========================================  ====  ================================================
key                                       type  content / TTL
========================================  ====  ================================================
``inboxpilot:observed:<conversation id>``  HASH  owner, assigned_at, stage, stage_entered_at,
                                                seen (epoch s of the newest record seen);
                                                TTL ``ttl_s`` refreshed at every observation
========================================  ====  ================================================

A record older than the one last seen (a page fetched before an executor's
fresher read) never moves the stored state back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import redis

from worker.api.models import Conversation
from worker.clock import Clock, from_epoch, to_epoch

PREFIX = "inboxpilot:observed:"
DERIVED_FIELDS = ("assigned_at", "stage_entered_at")

_OBSERVE = """
-- KEYS: one per conversation   ARGV: record, ttl, then owner, stage, updated_at per key
local out = {}
for i, key in ipairs(KEYS) do
  local owner, stage, at = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  local h = redis.call('hmget', key, 'owner', 'assigned_at', 'stage', 'stage_entered_at', 'seen')
  local assigned, entered = h[2], h[4]
  if not h[5] then
    assigned, entered = at, at
    if ARGV[1] == '1' then
      redis.call('hset', key, 'owner', owner, 'assigned_at', at, 'stage', stage,
        'stage_entered_at', at, 'seen', at)
    end
  else
    if h[1] ~= owner then assigned = at end
    if h[3] ~= stage then entered = at end
    if ARGV[1] == '1' and tonumber(at) >= tonumber(h[5]) then
      redis.call('hset', key, 'owner', owner, 'assigned_at', assigned, 'stage', stage,
        'stage_entered_at', entered, 'seen', at)
    end
  end
  if ARGV[1] == '1' then redis.call('expire', key, ARGV[2]) end
  table.insert(out, assigned)
  table.insert(out, entered)
end
return out
"""


_WROTE = """
-- KEYS: one per conversation   ARGV: ttl, at, field ('owner' | 'stage'), value
local since = ARGV[3] == 'owner' and 'assigned_at' or 'stage_entered_at'
for _, key in ipairs(KEYS) do
  local current = redis.call('hget', key, ARGV[3])
  if current and current ~= ARGV[4] then
    redis.call('hset', key, ARGV[3], ARGV[4], since, ARGV[2])
    redis.call('expire', key, ARGV[1])
  end
end
return 1
"""


class Observations:
    """Derives `assigned_at` / `stage_entered_at` where the API does not send them."""

    def __init__(self, client: redis.Redis, clock: Clock, *, ttl_s: int) -> None:
        if ttl_s <= 0:
            raise ValueError("Observations needs ttl_s > 0")
        self._clock = clock
        self._ttl_s = ttl_s
        self._observe = client.register_script(_OBSERVE)
        self._wrote = client.register_script(_WROTE)

    def wrote(self, conversation_ids: Sequence[int], fields: Mapping[str, object]) -> None:
        """Our own bulk change of owner or stage, applied now: observed without a re-read.

        Without it, a person undoing our change before the next poll would look like
        no change at all (the poll would see the owner it saw before ours).
        """
        now = repr(to_epoch(self._clock.now()))
        keys = [f"{PREFIX}{cid}" for cid in conversation_ids]
        if not keys:
            return
        if "owner_id" in fields:
            self._wrote(keys=keys, args=[self._ttl_s, now, "owner", _text(fields["owner_id"])])
        if "pipeline_stage_id" in fields:
            stage = f"{_text(fields.get('pipeline_id'))}:{_text(fields['pipeline_stage_id'])}"
            self._wrote(keys=keys, args=[self._ttl_s, now, "stage", stage])

    def apply(self, conversations: Sequence[Conversation], *, record: bool = True) -> list[Conversation]:
        """The conversations with derived times filled in where the record lacks them.

        With `record` (the poller, the executor) the observation is stored; without
        it (dry runs, `plan`, `explain`) the stored state is only read.
        """
        lacking = [c for c in conversations if not set(DERIVED_FIELDS) <= c.model_fields_set]
        if not lacking:
            return list(conversations)
        now = to_epoch(self._clock.now())
        args: list[str | int] = ["1" if record else "0", self._ttl_s]
        for c in lacking:
            updated = to_epoch(c.updated_at) if c.updated_at is not None else now
            args += [_text(c.owner_id), f"{_text(c.pipeline_id)}:{_text(c.pipeline_stage_id)}", repr(updated)]
        flat = self._observe(keys=[f"{PREFIX}{c.id}" for c in lacking], args=args)
        derived = {c.id: (_time(flat[2 * i]), _time(flat[2 * i + 1])) for i, c in enumerate(lacking)}
        return [_with_times(c, *derived[c.id]) if c.id in derived else c for c in conversations]


def _with_times(c: Conversation, assigned: datetime | None, entered: datetime | None) -> Conversation:
    update: dict[str, datetime | None] = {}
    if "assigned_at" not in c.model_fields_set:
        update["assigned_at"] = assigned
    if "stage_entered_at" not in c.model_fields_set:
        update["stage_entered_at"] = entered
    return c.model_copy(update=update)


def _text(value: object) -> str:
    return "none" if value is None else str(value)


def _time(raw: object) -> datetime | None:
    text = raw.decode() if isinstance(raw, bytes) else raw
    return from_epoch(float(str(text))) if text else None
