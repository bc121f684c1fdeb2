"""The incremental-poll watermark: how far the poller has read, without gaps or repeats.

The poll asks for ``updated_at >= watermark`` sorted on ``(updated_at, id)``.
``>=`` re-reads the records at the boundary timestamp (a record written in the
same instant as the last one seen, but after our read, must not be lost); the
ids already seen *at exactly that timestamp* are kept with the watermark so
those records are not processed twice. `advance_state` and `filter_new_records`
are the pure logic; `Watermark` persists it.

Writes are fenced: only the holder of the current leader token may save, checked
inside the same Lua script as the write, so a paused ex-leader cannot move the
watermark back or forward.

Redis keys:

===================================  ====  =============================================
key                                  type  content / TTL
===================================  ====  =============================================
``inboxpilot:watermark:<name>``      HASH  ``updated_at`` (ISO 8601), ``seen_ids`` (JSON
                                           list of ids at that timestamp), ``token`` (the
                                           fencing token that wrote it); no TTL
===================================  ====  =============================================
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

import redis

from worker.logs import get_logger
from worker.state.lease import lease_key

WATERMARK_PREFIX = "inboxpilot:watermark:"
# How far the API's record times may run ahead of its present before they count as "the future".
CLOCK_SKEW = timedelta(minutes=5)

_SAVE = """
-- KEYS: watermark, lease   ARGV: token, updated_at, seen_ids
if redis.call('get', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('hset', KEYS[1], 'updated_at', ARGV[2], 'seen_ids', ARGV[3], 'token', ARGV[1])
return 1
"""

log = get_logger(__name__)


class Stamped(Protocol):
    """What the watermark needs of a record (a `Conversation` fits)."""

    @property
    def id(self) -> int: ...

    @property
    def updated_at(self) -> datetime | None: ...


R = TypeVar("R", bound=Stamped)


@dataclass(frozen=True)
class WatermarkState:
    """`updated_at` None = nothing read yet (poll from the beginning)."""

    updated_at: datetime | None = None
    seen_ids: frozenset[int] = frozenset()


def filter_new_records(state: WatermarkState, records: Iterable[R]) -> list[R]:
    """Records not yet processed: drop those at the boundary already seen, and older ones.

    A record older than the watermark can only come from a server ignoring the
    filter; its state then was already read (or the full resync will read it).
    Records without `updated_at` are kept: they cannot be placed.
    """
    if state.updated_at is None:
        return list(records)
    out = []
    for record in records:
        stamp = record.updated_at
        if stamp is not None and (
            stamp < state.updated_at or (stamp == state.updated_at and record.id in state.seen_ids)
        ):
            continue
        out.append(record)
    return out


def horizon(server_now: datetime | None, our_now: datetime) -> datetime:
    """The latest `updated_at` the watermark may move to: the API's present plus `CLOCK_SKEW`.

    The API's present is its `Date`, but never later than our own clock: a server
    whose clock (or data) runs in 2099 must not make us ask for `updated_at >= 2099`.
    """
    present = our_now if server_now is None else min(server_now, our_now)
    return present + CLOCK_SKEW


def is_from_the_future(record: Stamped, limit: datetime | None) -> bool:
    """Stamped after `limit` (the `horizon`): processed, but the watermark does not follow it."""
    return limit is not None and record.updated_at is not None and record.updated_at > limit


def advance_state(
    state: WatermarkState, records: Iterable[Stamped], limit: datetime | None = None
) -> WatermarkState:
    """The watermark after processing `records`: the newest timestamp and the ids seen at it.

    Records stamped after `limit` are left out: the watermark stays at or before the
    API's present, so those records stay in view (every poll reads them again) and
    records created after them are still found.
    """
    current = state
    for record in records:
        stamp = record.updated_at
        if stamp is None or (current.updated_at is not None and stamp < current.updated_at):
            continue
        if is_from_the_future(record, limit):
            continue
        if current.updated_at is None or stamp > current.updated_at:
            current = WatermarkState(stamp, frozenset({record.id}))
        else:
            current = WatermarkState(stamp, current.seen_ids | {record.id})
    return current


class Watermark:
    """The poll watermark in Redis, written only by the current leader."""

    def __init__(self, client: redis.Redis, name: str = "poll", *, lease: str = "scheduler") -> None:
        self._redis = client
        self.key = WATERMARK_PREFIX + name
        self._lease_key = lease_key(lease)
        self._save = client.register_script(_SAVE)
        self._state = WatermarkState()

    @property
    def state(self) -> WatermarkState:
        """The state last loaded or saved by this instance."""
        return self._state

    def load(self) -> WatermarkState:
        raw = self._redis.hgetall(self.key)
        data = {_text(k): _text(v) for k, v in raw.items()}
        if not data.get("updated_at"):
            self._state = WatermarkState()
        else:
            seen = frozenset(int(i) for i in json.loads(data.get("seen_ids") or "[]"))
            self._state = WatermarkState(datetime.fromisoformat(data["updated_at"]), seen)
        return self._state

    def save(self, state: WatermarkState, token: int | None) -> bool:
        """Persist `state` if `token` is the current leader token; False (nothing written) otherwise."""
        if state.updated_at is None or token is None:
            return False
        seen = json.dumps(sorted(state.seen_ids))
        args = [str(token), state.updated_at.isoformat(), seen]
        if not self._save(keys=[self.key, self._lease_key], args=args):
            log.warning("watermark_write_refused", watermark=self.key, fence=token)
            return False
        self._state = state
        return True

    def filter_new(self, records: Sequence[R]) -> list[R]:
        """`filter_new_records` against the state last loaded or saved."""
        return filter_new_records(self._state, records)

    def advance(self, records: Iterable[Stamped], token: int | None, limit: datetime | None = None) -> bool:
        """Move the watermark past `records` (already processed; none after `limit`), fenced by `token`."""
        new = advance_state(self._state, records, limit)
        if new == self._state:
            return True
        return self.save(new, token)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
