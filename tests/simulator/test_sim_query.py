"""The simulator's own qs parser and Feathers matching (no HTTP)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from worker.simulator.errors import BadRequest
from worker.simulator.query import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    matches,
    parse_find,
    parse_query_string,
    project,
    sort_records,
)

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
RECORD: dict[str, Any] = {
    "id": 7,
    "status": "open",
    "owner_id": None,
    "unread_count": 3,
    "updated_at": T0,
    "tags": ["vip", "billing"],
    "flagged": True,
}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("status=open", {"status": "open"}),
        ("updated_at[$gt]=2026-11-02T09:00:00.000Z", {"updated_at": {"$gt": "2026-11-02T09:00:00.000Z"}}),
        ("$sort[updated_at]=1&$sort[id]=-1", {"$sort": {"updated_at": "1", "id": "-1"}}),
        ("id[$in][]=1&id[$in][]=2", {"id": {"$in": ["1", "2"]}}),
        ("id[$in][0]=1&id[$in][1]=2", {"id": {"$in": ["1", "2"]}}),
        ("$or[0][status]=open&$or[1][owner_id]=null", {"$or": [{"status": "open"}, {"owner_id": "null"}]}),
        ("%24limit=5&%24skip=10", {"$limit": "5", "$skip": "10"}),
        ("id%5B%24nin%5D%5B%5D=3", {"id": {"$nin": ["3"]}}),
        ("$select[]=id&$select[]=status", {"$select": ["id", "status"]}),
        ("tags=a&tags=b", {"tags": ["a", "b"]}),
        ("message_text=hello+world", {"message_text": "hello world"}),
    ],
)
def test_parse_query_string(raw: str, expected: dict[str, Any]) -> None:
    assert parse_query_string(raw) == expected


def test_parse_rejects_a_value_mixed_with_nested_keys() -> None:
    with pytest.raises(BadRequest):
        parse_query_string("a=1&a[$gt]=2")


def test_limit_defaults_and_clamps() -> None:
    assert parse_find({}).limit == DEFAULT_LIMIT == 10
    assert parse_find({"$limit": "100"}).limit == MAX_LIMIT == 50
    assert parse_find({"$limit": "0"}).limit == 0
    assert parse_find({"$skip": "20"}).skip == 20


@pytest.mark.parametrize(
    "query", [{"$limit": "x"}, {"$limit": "-1"}, {"$skip": "-5"}, {"$sort": {"id": "2"}}]
)
def test_bad_controls_are_bad_requests(query: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        parse_find(query)


@pytest.mark.parametrize(
    "query",
    [{"$where": "1"}, {"id": {"$regex": "x"}}, {"$or": "status"}, {"$or": [{"id": {"$foo": "1"}}]}],
)
def test_unknown_operators_are_bad_requests(query: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        parse_find(query)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"status": "open"}, True),
        ({"status": "closed"}, False),
        ({"id": "7"}, True),
        ({"id": {"$gt": "6"}}, True),
        ({"id": {"$gt": "7"}}, False),
        ({"id": {"$gte": "7", "$lte": "7"}}, True),
        ({"id": {"$lt": "7"}}, False),
        ({"id": {"$in": ["1", "7"]}}, True),
        ({"id": {"$nin": ["1", "7"]}}, False),
        ({"id": {"$ne": "7"}}, False),
        ({"unread_count": {"$gte": "3"}}, True),
        ({"owner_id": "null"}, True),
        ({"owner_id": {"$ne": "null"}}, False),
        ({"owner_id": {"$gt": "1"}}, False),  # null is never greater or less
        ({"owner_id": {"$in": ["101", "null"]}}, True),
        ({"updated_at": {"$gte": "2026-11-02T09:00:00.000Z"}}, True),
        ({"updated_at": {"$gt": "2026-11-02T09:00:00.000Z"}}, False),
        ({"updated_at": {"$gt": "2026-11-02T10:59:59.999+02:00"}}, True),  # offsets compare as instants
        ({"updated_at": {"$lt": "2026-11-02T09:00:00.001Z"}}, True),
        ({"tags": "vip"}, True),  # array field: contains
        ({"tags": {"$in": ["sales", "billing"]}}, True),
        ({"tags": {"$nin": ["vip"]}}, False),
        ({"flagged": "true"}, True),
        ({"flagged": "false"}, False),
        ({"missing_field": "null"}, True),
        ({"$or": [{"status": "closed"}, {"id": "7"}]}, True),
        ({"$or": [{"status": "closed"}, {"id": "8"}]}, False),
        ({"$and": [{"status": "open"}, {"id": {"$in": ["7"]}}]}, True),
        ({"status": ["closed", "open"]}, True),
    ],
)
def test_matching_coerces_against_the_stored_type(filters: dict[str, Any], expected: bool) -> None:
    assert matches(RECORD, filters) is expected


@pytest.mark.parametrize(
    "filters", [{"id": "seven"}, {"updated_at": {"$gt": "yesterday"}}, {"flagged": "maybe"}]
)
def test_uncoercible_values_are_bad_requests(filters: dict[str, Any]) -> None:
    with pytest.raises(BadRequest, match="Invalid value"):
        matches(RECORD, filters)


def test_sort_multi_key_with_nulls_first() -> None:
    rows = [{"id": 1, "o": 2}, {"id": 2, "o": None}, {"id": 3, "o": 2}, {"id": 4, "o": 1}]
    assert [r["id"] for r in sort_records(rows, [("o", 1), ("id", -1)])] == [2, 4, 3, 1]
    assert [r["id"] for r in sort_records(rows, [("o", -1)])] == [1, 3, 4, 2]


def test_select_always_keeps_the_id_field() -> None:
    assert project(RECORD, ("status",), "id") == {"id": 7, "status": "open"}
    assert project(RECORD, None, "id") == RECORD
