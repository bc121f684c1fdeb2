"""Feathers query encoding: a nested query mapping to qs-style query parameters.

Feathers' REST transport parses the query string with `qs`, so a nested query
must be flattened the way `qs` reads it back:

- operators and `$sort` are nested keys: `updated_at[$gte]=...`, `$sort[id]=1`;
- lists of scalars use empty brackets: `id[$in][]=1&id[$in][]=2`, `$select[]=id`;
- lists of objects (`$or`, `$and`) use indices: `$or[0][status]=open`.

Values are rendered as Feathers expects them on the wire: datetimes as ISO 8601
UTC with a `Z`, `None` as `null`, booleans as `true`/`false`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

QueryParams = list[tuple[str, str]]


class QueryEncodingError(ValueError):
    """A query value that cannot be expressed in a Feathers query string."""


def encode_query(params: Mapping[str, Any]) -> QueryParams:
    """Flatten a Feathers query into ordered `(key, value)` pairs for the URL."""
    pairs: QueryParams = []
    for key, value in params.items():
        _encode(str(key), value, pairs)
    return pairs


def encode_value(value: Any) -> str:
    """Render one scalar the way the API reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return encode_value(value.value)
    if isinstance(value, str | int | float):
        return str(value)
    raise QueryEncodingError(f"cannot encode {type(value).__name__} value in a query")


def format_datetime(value: datetime) -> str:
    """ISO 8601 in UTC with a `Z`; naive datetimes are refused (their zone is unknown)."""
    if value.tzinfo is None:
        raise QueryEncodingError(f"naive datetime {value.isoformat()} in a query: give it a timezone")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _encode(prefix: str, value: Any, pairs: QueryParams) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _encode(f"{prefix}[{key}]", inner, pairs)
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        _encode_list(prefix, value, pairs)
    else:
        pairs.append((prefix, encode_value(value)))


def _encode_list(prefix: str, items: Sequence[Any], pairs: QueryParams) -> None:
    if not items:
        # qs has no spelling for an empty array; dropping the key would widen the
        # query (e.g. `id[$in]=[]` would match everything), so refuse instead.
        raise QueryEncodingError(f"{prefix}: an empty list cannot be encoded in a query")
    if any(isinstance(item, Mapping | list | tuple) for item in items):
        # Objects inside arrays need explicit indices for qs to keep them apart.
        for index, item in enumerate(items):
            _encode(f"{prefix}[{index}]", item, pairs)
        return
    for item in items:
        pairs.append((f"{prefix}[]", encode_value(item)))
