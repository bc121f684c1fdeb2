"""Finds whose query carries a long array, for a server that caps arrays in its query string.

Feathers parses the query string with `qs`, whose default `arrayLimit` is 20: a longer
array (`$or[21][…]`, and in qs >= 6.14.1 more than 20 `id[$in][]=…`) arrives as an object
with numeric keys and the query validation answers 400 BadRequest ("must be array";
feathersjs/feathers#3399, #2240). The contract is silent about sizes, so the worker batches
50 ids per find; the first such 400 on a query with an array over 20 items teaches the
client the limit (`ArrayLimit`), the same find is answered again from parts of at most 20
(`split_query`, merged here exactly), and later finds are split before they are sent.

Merging: `$in`/`$or` parts are a union (records deduplicated by id), `$nin`/`$and` parts an
intersection. Parts come back in the find's sort: when the sort starts on the field the
array partitions (`id[$in]` sorted by id, `$or` branches on `conversation_id` sorted by
conversation), the parts are consecutive ranges and are read lazily, one after the other.
"""

from __future__ import annotations

import functools
import heapq
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.api.models import Page
from worker.config import MAX_PAGE_SIZE
from worker.logs import get_logger

log = get_logger(__name__)

QS_ARRAY_LIMIT = 20  # qs's default `arrayLimit`
DEFAULT_FIND_LIMIT = 10  # Feathers' `paginate.default` when a find sends no `$limit`
UNION_FIELD_OPERATORS = frozenset({"$in"})
INTERSECTION_FIELD_OPERATORS = frozenset({"$nin"})
UNION_LOGICAL = "$or"
INTERSECTION_LOGICAL = "$and"
_ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T")

PageFetch = Callable[[Mapping[str, Any]], Page]
"""One find of one part, exactly as sent (the client's un-split `find_page`)."""


@dataclass(frozen=True)
class LongArray:
    """The one array of a query that is longer than the limit, and where it sits."""

    field: str | None  # the field of a `$in`/`$nin`; None for a top-level `$or`/`$and`
    operator: str
    items: list[Any]

    @property
    def union(self) -> bool:
        return self.operator in UNION_FIELD_OPERATORS or self.operator == UNION_LOGICAL

    def describe(self) -> str:
        return self.operator if self.field is None else f"{self.field}[{self.operator}]"


@dataclass(frozen=True)
class Split:
    """A find answered from parts: their queries, how they combine, whether they are ranges."""

    parts: list[dict[str, Any]]
    union: bool
    ranged: bool  # the parts are consecutive in the sort: read them one after the other


class ArrayLimit:
    """The longest array this process sends in one query: 50 until a server refuses one."""

    def __init__(self, limit: int = MAX_PAGE_SIZE) -> None:
        self._limit = limit
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        return self._limit

    def split_refused(self, query: Mapping[str, Any]) -> Split | None:
        """After a 400 on `query`: its parts of qs's default limit, if it carried a longer array."""
        if not long_arrays(query, QS_ARRAY_LIMIT):
            return None
        return split_query(query, min(self._limit, QS_ARRAY_LIMIT))

    def confirm(self, query: Mapping[str, Any], path: str, status: int) -> None:
        """The parts of a refused query went through: keep qs's default limit from now on."""
        with self._lock:
            if self._limit <= QS_ARRAY_LIMIT:
                return
            self._limit = QS_ARRAY_LIMIT
        array = long_arrays(query, QS_ARRAY_LIMIT)[0]
        log.warning(
            "query_array_limit",
            limit=QS_ARRAY_LIMIT,
            path=path,
            status=status,
            array=array.describe(),
            items=len(array.items),
            reason="the server refused a query with a longer array (qs arrayLimit); "
            "finds are split into parts of at most this many items from now on",
        )


def long_arrays(query: Mapping[str, Any], limit: int) -> list[LongArray]:
    """The arrays of `query` longer than `limit`: `field[$in|$nin]` lists and `$or`/`$and`."""
    found: list[LongArray] = []
    for key, value in query.items():
        if key in (UNION_LOGICAL, INTERSECTION_LOGICAL) and isinstance(value, list | tuple):
            if len(value) > limit:
                found.append(LongArray(None, key, list(value)))
        elif not key.startswith("$") and isinstance(value, Mapping):
            for op, items in value.items():
                in_like = op in UNION_FIELD_OPERATORS or op in INTERSECTION_FIELD_OPERATORS
                if in_like and isinstance(items, list | tuple) and len(items) > limit:
                    found.append(LongArray(str(key), str(op), list(items)))
    return found


def split_query(query: Mapping[str, Any], limit: int) -> Split | None:
    """`query` as parts whose arrays hold at most `limit` items; None when it needs no split.

    Only one long array per query is split (two would multiply the parts); a query with two
    is sent as it is and its error stands.
    """
    long = long_arrays(query, limit)
    if len(long) != 1:
        return None
    array = long[0]
    order = _sort_of(query)
    items, ranged = _partition_order(array, order)
    parts = []
    for start in range(0, len(items), limit):
        chunk = items[start : start + limit]
        part = dict(query)
        if array.field is None:
            part[array.operator] = chunk
        else:
            part[array.field] = {**query[array.field], array.operator: chunk}
        parts.append(part)
    return Split(parts, array.union, ranged and array.union)


def merge_streams(
    streams: list[Iterator[dict[str, Any]]], order: Mapping[str, int], id_key: str, *, union: bool
) -> Iterator[dict[str, Any]]:
    """The parts' records as one find in `order` would give them, each id once."""
    if not union:
        yield from _intersection(streams, id_key)
        return
    seen: set[Any] = set()
    merged = heapq.merge(*streams, key=sort_key(order)) if order else (r for s in streams for r in s)
    for record in merged:
        key = record.get(id_key)
        if key is not None and key in seen:
            continue
        seen.add(key)
        yield record


def split_page(fetch: PageFetch, query: Mapping[str, Any], split: Split) -> Page:
    """One find's page (`$skip`, `$limit` of `query`) answered from the parts of `split`.

    The data is exactly the one find's; `total` is the sum of the parts' totals (exact when the
    parts match disjoint records, as `$in` values and per-conversation `$or` branches do)."""
    skip = int(query.get("$skip", 0) or 0)
    limit = min(int(query.get("$limit", DEFAULT_FIND_LIMIT)), MAX_PAGE_SIZE)
    if limit <= 0:  # a count: Feathers answers `total` with no data
        if not split.union:
            raise ValueError("cannot count an intersection of parts without reading them")
        totals = [fetch({**part, "$limit": 0}).total for part in split.parts]
        return Page(total=sum(totals), limit=0, skip=skip, data=[])
    if split.ranged:
        return _ranged_page(fetch, split.parts, skip, limit)
    id_key = _id_key_of(query)
    want = None if not split.union else skip + limit
    streams = [_records(fetch, part, want) for part in split.parts]
    totals = [0] * len(streams)
    counted = [_counting(stream, totals, index) for index, stream in enumerate(streams)]
    records = list(merge_streams(counted, _sort_of(query), id_key, union=split.union))
    total = sum(totals) if split.union else len(records)
    return Page(total=max(total, len(records)), limit=limit, skip=skip, data=records[skip : skip + limit])


def sort_key(order: Mapping[str, int]) -> Callable[[dict[str, Any]], Any]:
    """A key ordering records as a Feathers `$sort` does (null first; ISO times as times)."""
    fields = list(order.items())

    def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
        for field, direction in fields:
            left, right = _comparable(a.get(field)), _comparable(b.get(field))
            if left != right:
                return (-1 if left < right else 1) * (1 if direction >= 0 else -1)
        return 0

    return functools.cmp_to_key(compare)


# --- helpers -----------------------------------------------------------------------------


def _sort_of(query: Mapping[str, Any]) -> dict[str, int]:
    raw = query.get("$sort")
    return {str(k): int(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}


def _partition_order(array: LongArray, order: Mapping[str, int]) -> tuple[list[Any], bool]:
    """The items, sorted so each part is one range of the find's first sort field when it can be."""
    if not order:
        return array.items, False
    first, direction = next(iter(order.items()))
    if array.field == first:
        values = array.items
    elif array.field is None and all(
        isinstance(b, Mapping) and first in b and not isinstance(b[first], Mapping | list)
        for b in array.items
    ):
        values = [b[first] for b in array.items]
    else:
        return array.items, False
    if len(set(map(repr, values))) != len(values):
        return array.items, False  # a value in two parts would interleave them
    try:
        paired = sorted(zip(values, range(len(values)), strict=True), reverse=direction < 0)
    except TypeError:
        return array.items, False
    return [array.items[index] for _, index in paired], True


def _ranged_page(fetch: PageFetch, parts: list[dict[str, Any]], skip: int, limit: int) -> Page:
    """The parts are consecutive in the sort: skip through them in order, stop once the page is
    full. `total` then counts the parts read, plus one when parts were left unread, so a caller
    comparing `total` with what it received still sees that more follow."""
    data: list[dict[str, Any]] = []
    total = 0
    to_skip = skip
    for part in parts:
        if len(data) >= limit:
            total = max(total, skip + len(data) + 1)  # parts left unread may hold more
            break
        page = fetch({**part, "$skip": to_skip, "$limit": limit - len(data)})
        total += page.total
        data.extend(page.data)
        got = to_skip + page.received
        while len(data) < limit and page.received and got < page.total:
            page = fetch({**part, "$skip": got, "$limit": limit - len(data)})
            data.extend(page.data)
            got += page.received
        to_skip = max(0, to_skip - page.total)
    return Page(total=total, limit=limit, skip=skip, data=data[:limit])


def _records(fetch: PageFetch, query: Mapping[str, Any], want: int | None) -> Iterator[Page | dict[str, Any]]:
    """A part's records from its start (`want` at most; None: all), page by page; each page is
    yielded first so the caller can read its total."""
    got = 0
    while want is None or got < want:
        size = MAX_PAGE_SIZE if want is None else min(MAX_PAGE_SIZE, want - got)
        page = fetch({**query, "$skip": got, "$limit": size})
        yield page
        yield from page.data
        got += page.received
        if not page.received or got >= page.total:
            return


def _counting(stream: Iterator[Any], totals: list[int], index: int) -> Iterator[dict[str, Any]]:
    for item in stream:
        if isinstance(item, Page):
            totals[index] = item.total
        else:
            yield item


def _intersection(streams: list[Iterator[dict[str, Any]]], id_key: str) -> Iterator[dict[str, Any]]:
    """Records found in every part, in the first part's order."""
    first, *others = [list(stream) for stream in streams]
    keep = set.intersection(*({r.get(id_key) for r in other} for other in others)) if others else None
    for record in first:
        if keep is None or record.get(id_key) in keep:
            yield record


def _id_key_of(query: Mapping[str, Any]) -> str:
    order = _sort_of(query)
    return "_id" if "_id" in order else "id"


def _comparable(value: Any) -> tuple[int, Any]:
    """Null first (as MongoDB sorts), then numbers, then times, then other text."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool | int | float):
        return (1, value)
    if isinstance(value, str) and _ISO_RE.match(value):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return (3, value)
        return (2, when if when.tzinfo is not None else when.replace(tzinfo=UTC))
    return (3, str(value))
