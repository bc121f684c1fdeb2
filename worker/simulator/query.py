"""Feathers queries: qs-style parsing, validation, matching, sorting, paging.

Written independently of the client's encoder on purpose: if both shared one
misunderstanding of the wire format, tests using both would never see it.
Values arrive as strings and are coerced against the stored field's type
(`int`, ISO datetime, `true`/`false`; `null` is None for every type).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from worker.simulator.errors import BadRequest

MAX_LIMIT = 50  # contract A: every find uses $limit <= 50; above is clamped (contract B)
DEFAULT_LIMIT = 10  # Feathers' default `paginate.default` when $limit is absent
FIELD_OPERATORS = frozenset({"$in", "$nin", "$lt", "$lte", "$gt", "$gte", "$ne"})
LOGICAL_OPERATORS = frozenset({"$or", "$and"})
RANGE_OPERATORS = frozenset({"$lt", "$lte", "$gt", "$gte"})
_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SEGMENT_RE = re.compile(r"\[([^\[\]]*)\]")

Record = Mapping[str, Any]
R = TypeVar("R", bound=Mapping[str, Any])


@dataclass(frozen=True)
class FindParams:
    """A validated find: filters plus the `$` controls."""

    filters: dict[str, Any]
    sort: tuple[tuple[str, int], ...] = ()
    limit: int = DEFAULT_LIMIT
    skip: int = 0
    select: tuple[str, ...] | None = None


# --- qs-style parsing -------------------------------------------------------


def parse_query_string(raw: str, *, array_limit: int | None = None) -> dict[str, Any]:
    """Parse `a[$gt]=1&$sort[f]=1&f[$in][]=x&$or[0][f]=v` into nested dicts and lists.

    `array_limit` emulates qs's `arrayLimit` (20 by default in qs; None here: no limit): qs
    turns a longer array into an object with numeric keys, and Feathers' query validation
    then answers 400 "must be array" (feathersjs/feathers#3399). qs's exact rule is an index
    above the limit, or (>= 6.14.1) more items than the limit in `a[]`; this refuses any
    array of more than `array_limit` items, the stricter of the two.
    """
    root: dict[str, Any] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        _assign(root, _split_key(key), value)
    result = _listify(root)
    assert isinstance(result, dict)
    if array_limit is not None:
        _check_arrays(result, "", array_limit)
    return result


class ArrayTooLong(BadRequest):
    """A query array over the emulated qs `arrayLimit` (answered as Feathers' 400 BadRequest)."""


def _check_arrays(node: Any, where: str, limit: int) -> None:
    if isinstance(node, list):
        if len(node) > limit:
            raise ArrayTooLong(
                "validation failed",
                data=[
                    {
                        "instancePath": where,
                        "keyword": "type",
                        "message": "must be array",
                        "params": {"type": "array"},
                    }
                ],
            )
        for index, item in enumerate(node):
            _check_arrays(item, f"{where}/{index}", limit)
    elif isinstance(node, dict):
        for key, value in node.items():
            _check_arrays(value, f"{where}/{key}", limit)


def _split_key(key: str) -> list[str]:
    match = _KEY_RE.match(key)
    if not match:
        return [key]  # qs keeps a malformed key literally
    return [match.group(1), *_SEGMENT_RE.findall(match.group(2))]


def _assign(node: dict[str, Any], path: list[str], value: str) -> None:
    key, rest = path[0], path[1:]
    if rest == [""]:
        existing = node.get(key)
        node[key] = [*_as_list(existing), value]
        return
    if not rest:
        _put_leaf(node, key, value)
        return
    if "" in rest[:-1]:
        raise BadRequest(f"Invalid query parameter {key}: '[]' is only allowed last")
    child = node.setdefault(key, {})
    if not isinstance(child, dict):
        raise BadRequest(f"Invalid query parameter {key}: mixes a value and nested keys")
    _assign(child, rest, value)


def _put_leaf(node: dict[str, Any], key: str, value: str) -> None:
    existing = node.get(key)
    if existing is None:
        node[key] = value
    elif isinstance(existing, dict):
        raise BadRequest(f"Invalid query parameter {key}: mixes a value and nested keys")
    else:
        node[key] = [*_as_list(existing), value]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _listify(node: Any) -> Any:
    """qs turns objects keyed 0..n into arrays (`$or[0][f]=v`)."""
    if isinstance(node, list):
        return [_listify(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _listify(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


# --- validation ---------------------------------------------------------------


def parse_find(query: Mapping[str, Any]) -> FindParams:
    """Split a parsed query into validated filters and `$limit/$skip/$sort/$select`."""
    filters = {key: value for key, value in query.items() if key not in _CONTROLS}
    validate_filters(filters)
    return FindParams(
        filters=filters,
        sort=_parse_sort(query.get("$sort")),
        limit=min(_non_negative_int("$limit", query.get("$limit"), DEFAULT_LIMIT), MAX_LIMIT),
        skip=_non_negative_int("$skip", query.get("$skip"), 0),
        select=_parse_select(query.get("$select")),
    )


_CONTROLS = frozenset({"$limit", "$skip", "$sort", "$select"})


def validate_filters(filters: Mapping[str, Any]) -> None:
    """Reject unknown operators and malformed `$or`/`$and` (400 BadRequest)."""
    for key, condition in filters.items():
        if key in LOGICAL_OPERATORS:
            if not isinstance(condition, list) or not all(isinstance(c, dict) for c in condition):
                raise BadRequest(f"Invalid query parameter {key}: expected a list of queries")
            for sub in condition:
                validate_filters(sub)
        elif key.startswith("$"):
            raise BadRequest(f"Invalid query parameter {key}")
        elif isinstance(condition, dict):
            unknown = [op for op in condition if op not in FIELD_OPERATORS]
            if unknown:
                raise BadRequest(f"Invalid query operator {unknown[0]} on field {key}")


def _parse_sort(raw: Any) -> tuple[tuple[str, int], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise BadRequest("Invalid $sort: expected $sort[field]=1 or -1")
    sort: list[tuple[str, int]] = []
    for field, direction in raw.items():
        if str(direction) not in ("1", "-1"):
            raise BadRequest(f"Invalid $sort[{field}]: expected 1 or -1")
        sort.append((field, int(direction)))
    return tuple(sort)


def _non_negative_int(name: str, raw: Any, default: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"Invalid {name}: expected a non-negative integer") from None
    if value < 0:
        raise BadRequest(f"Invalid {name}: expected a non-negative integer")
    return value


def _parse_select(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    fields = raw if isinstance(raw, list) else [raw]
    if not all(isinstance(field, str) for field in fields):
        raise BadRequest("Invalid $select: expected field names")
    return tuple(fields)


# --- coercion -------------------------------------------------------------------


def parse_datetime(raw: str) -> datetime:
    """ISO 8601 (with `Z` or an offset; naive means UTC) to an aware datetime."""
    value = datetime.fromisoformat(raw.strip())
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(raw)


_COERCERS: dict[type, Callable[[str], Any]] = {
    bool: _parse_bool,
    int: int,
    float: float,
    datetime: parse_datetime,
    str: str,
}


_COERCERS_BY_NAME = {kind.__name__: parse for kind, parse in _COERCERS.items()}


@lru_cache(maxsize=4096)
def _coerce_cached(raw: str, kind: str) -> Any:
    return _COERCERS_BY_NAME[kind](raw)


def coerce(field: str, raw: Any, like: Any) -> Any:
    """Coerce a query value to the type of the stored value `like`."""
    if not isinstance(raw, str):
        return raw
    if raw == "null":
        return None
    kind = type(like)
    if like is None or kind not in _COERCERS:
        return raw
    try:
        return _coerce_cached(raw, kind.__name__)
    except ValueError:
        raise BadRequest(f"Invalid value '{raw}' for {field}: expected {kind.__name__}") from None


# --- matching -------------------------------------------------------------------

Comparator = Callable[[str, Any, Any], bool]


def _equal(field: str, stored: Any, raw: Any) -> bool:
    if isinstance(stored, list):
        return any(_equal(field, item, raw) for item in stored) or stored == raw
    return bool(stored == coerce(field, raw, stored))


def _ordered(compare: Callable[[Any, Any], bool]) -> Comparator:
    def check(field: str, stored: Any, raw: Any) -> bool:
        if isinstance(stored, list):
            return any(check(field, item, raw) for item in stored)
        operand = coerce(field, raw, stored)
        if stored is None or operand is None:
            return False
        try:
            return compare(stored, operand)
        except TypeError:
            return False

    return check


def _in(field: str, stored: Any, raw: Any) -> bool:
    if isinstance(raw, list) and len(raw) > 1 and not isinstance(stored, list):
        # `id[$in]` of 50 ids checked on every candidate: coerce the list once per find,
        # then one set look-up (same answers as the loop below, which remains for the rest).
        members = _members(field, raw, type(stored))
        if members is not None:
            try:
                return stored in members
            except TypeError:  # an unhashable stored value
                pass
    return any(_equal(field, stored, item) for item in _as_list(raw))


# The last `$in` list seen and its members by stored type: a find checks one list on
# every candidate record. Holding the list keeps its identity from being reused.
_last_in: tuple[list[Any], type, frozenset[Any] | None] | None = None


def _members(field: str, raw: list[Any], kind: type) -> frozenset[Any] | None:
    global _last_in
    last = _last_in
    if last is not None and last[0] is raw and last[1] is kind:
        return last[2]
    members = None
    if all(isinstance(item, str) for item in raw):
        try:
            members = _coerced_set(field, tuple(raw), kind)
        except BadRequest:  # an invalid value: the loop raises it where it meets it
            members = None
    _last_in = (raw, kind, members)
    return members


@lru_cache(maxsize=256)
def _coerced_set(field: str, items: tuple[str, ...], kind: type) -> frozenset[Any]:
    if kind not in _COERCERS:  # None and unknown types compare with the raw text, as `coerce`
        return frozenset(None if raw == "null" else raw for raw in items)
    try:
        return frozenset(None if raw == "null" else _coerce_cached(raw, kind.__name__) for raw in items)
    except ValueError:
        raise BadRequest(f"Invalid value for {field}: expected {kind.__name__}") from None


OPERATORS: dict[str, Comparator] = {
    "$ne": lambda field, stored, raw: not _equal(field, stored, raw),
    "$in": _in,
    "$nin": lambda field, stored, raw: not _in(field, stored, raw),
    "$lt": _ordered(lambda a, b: bool(a < b)),
    "$lte": _ordered(lambda a, b: bool(a <= b)),
    "$gt": _ordered(lambda a, b: bool(a > b)),
    "$gte": _ordered(lambda a, b: bool(a >= b)),
}


def matches(record: Record, filters: Mapping[str, Any]) -> bool:
    """True when the record satisfies every filter (Feathers/Mongo semantics)."""
    for key, condition in filters.items():
        if key == "$or":
            if not any(matches(record, sub) for sub in condition):
                return False
        elif key == "$and":
            if not all(matches(record, sub) for sub in condition):
                return False
        elif not _field_matches(key, record.get(key), condition):
            return False
    return True


def _field_matches(field: str, stored: Any, condition: Any) -> bool:
    if isinstance(condition, dict):
        return all(OPERATORS[op](field, stored, operand) for op, operand in condition.items())
    if isinstance(condition, list):  # repeated `f=a&f=b` reads as $in
        return _in(field, stored, condition)
    return _equal(field, stored, condition)


# --- sorting, projection, paging ------------------------------------------------------


def _sort_key(field: str) -> Callable[[Record], tuple[int, Any]]:
    def key(record: Record) -> tuple[int, Any]:
        value = record.get(field)
        return (0, 0) if value is None else (1, value)  # null sorts first, as in MongoDB

    return key


def sort_records(records: Iterable[R], sort: Iterable[tuple[str, int]]) -> list[R]:
    """Stable multi-key sort; apply keys last to first."""
    ordered = list(records)
    for field, direction in reversed(tuple(sort)):
        ordered.sort(key=_sort_key(field), reverse=direction < 0)
    return ordered


def project(record: Record, select: tuple[str, ...] | None, id_field: str) -> dict[str, Any]:
    """`$select`: keep the listed fields; Feathers always keeps the id field."""
    if select is None:
        return dict(record)
    keep = {id_field, *select}
    return {key: value for key, value in record.items() if key in keep}


def envelope(total: int, params: FindParams, data: list[dict[str, Any]]) -> dict[str, Any]:
    return {"total": total, "limit": params.limit, "skip": params.skip, "data": data}


def find_in(records: Iterable[R], params: FindParams) -> tuple[int, list[R]]:
    """Generic find over an iterable: filter, sort, then page. Returns (total, page)."""
    matched = [record for record in records if matches(record, params.filters)]
    if params.sort:
        matched = sort_records(matched, params.sort)
    return len(matched), matched[params.skip : params.skip + params.limit]
