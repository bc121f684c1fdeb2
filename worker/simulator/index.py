"""A sorted `(updated_at, id)` index so the poller's find costs O(log N + page).

The poller asks for `updated_at[$gte]=T` sorted on `(updated_at, id)`; the
index answers the range with two bisections instead of scanning every record.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime

IndexKey = tuple[datetime, int]

INDEX_ORDERS: dict[tuple[tuple[str, int], ...], bool] = {
    # $sort spelled by the caller -> iterate the index in reverse? A lone descending
    # updated_at is absent on purpose: the generic stable sort breaks its ties id-ascending.
    (("updated_at", 1),): False,
    (("updated_at", 1), ("id", 1)): False,
    (("updated_at", -1), ("id", -1)): True,
}


class UpdatedAtIndex:
    """Keys `(updated_at, id)` kept sorted in a list (bisect on every change)."""

    def __init__(self) -> None:
        self._keys: list[IndexKey] = []

    def __len__(self) -> int:
        return len(self._keys)

    def load(self, keys: Iterable[IndexKey]) -> None:
        """Bulk load (seeding): one sort instead of N insertions."""
        self._keys = sorted(keys)

    def add(self, key: IndexKey) -> None:
        insort(self._keys, key)

    def discard(self, key: IndexKey) -> None:
        position = bisect_left(self._keys, key)
        if position < len(self._keys) and self._keys[position] == key:
            del self._keys[position]

    def bounds(self, condition: Mapping[str, datetime]) -> tuple[int, int]:
        """Index positions [lo, hi) of keys whose updated_at meets every range operator."""
        lo, hi = 0, len(self._keys)
        for op, value in condition.items():
            first_at = bisect_left(self._keys, (value,))  # first key with updated_at >= value
            after = bisect_right(self._keys, (value, math.inf))  # first key with updated_at > value
            if op == "$gte":
                lo = max(lo, first_at)
            elif op == "$gt":
                lo = max(lo, after)
            elif op == "$lt":
                hi = min(hi, first_at)
            elif op == "$lte":
                hi = min(hi, after)
        return lo, max(lo, hi)

    def page_ids(self, lo: int, hi: int, skip: int, limit: int, *, reverse: bool = False) -> list[int]:
        """The ids of one page of [lo, hi): positions are computed, so a deep `$skip` costs nothing."""
        if reverse:
            start, stop = max(lo, hi - skip - limit), max(lo, hi - skip)
        else:
            start, stop = min(hi, lo + skip), min(hi, lo + skip + limit)
        return list(self.ids(start, stop, reverse=reverse))

    def ids(self, lo: int, hi: int, *, reverse: bool = False) -> Iterator[int]:
        positions = range(hi - 1, lo - 1, -1) if reverse else range(lo, hi)
        keys = self._keys
        return (keys[position][1] for position in positions)
