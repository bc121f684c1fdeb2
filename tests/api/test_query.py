"""Feathers (qs-style) query encoding, one operator at a time."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime, timedelta, timezone

import httpx
import pytest

from worker.api.query import QueryEncodingError, encode_query, encode_value, format_datetime


def test_equality() -> None:
    assert encode_query({"status": "open", "channel": "sms"}) == [("status", "open"), ("channel", "sms")]


@pytest.mark.parametrize("op", ["$gt", "$gte", "$lt", "$lte", "$ne"])
def test_comparison_operators(op: str) -> None:
    assert encode_query({"unread_count": {op: 3}}) == [(f"unread_count[{op}]", "3")]


@pytest.mark.parametrize("op", ["$in", "$nin"])
def test_list_operators_use_empty_brackets(op: str) -> None:
    assert encode_query({"id": {op: [1, 2]}}) == [(f"id[{op}][]", "1"), (f"id[{op}][]", "2")]


def test_range_keeps_both_bounds() -> None:
    assert encode_query({"id": {"$gt": 1, "$lt": 9}}) == [("id[$gt]", "1"), ("id[$lt]", "9")]


def test_sort_is_ordered() -> None:
    query = {"$sort": {"updated_at": 1, "id": -1}}
    assert encode_query(query) == [("$sort[updated_at]", "1"), ("$sort[id]", "-1")]


def test_select() -> None:
    assert encode_query({"$select": ["id", "status"]}) == [("$select[]", "id"), ("$select[]", "status")]


def test_limit_and_skip() -> None:
    assert encode_query({"$limit": 50, "$skip": 100}) == [("$limit", "50"), ("$skip", "100")]


def test_or_uses_indices() -> None:
    query = {"$or": [{"status": "open"}, {"owner_id": None}]}
    assert encode_query(query) == [("$or[0][status]", "open"), ("$or[1][owner_id]", "null")]


def test_or_with_nested_operators() -> None:
    when = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    query = {"$or": [{"updated_at": {"$lt": when}}, {"id": {"$in": [4, 5]}}]}
    assert encode_query(query) == [
        ("$or[0][updated_at][$lt]", "2026-11-02T09:00:00Z"),
        ("$or[1][id][$in][]", "4"),
        ("$or[1][id][$in][]", "5"),
    ]


def test_datetimes_are_utc_with_z() -> None:
    paris = timezone(timedelta(hours=1))
    assert format_datetime(datetime(2026, 11, 2, 10, 0, 0, 250000, tzinfo=paris)) == (
        "2026-11-02T09:00:00.250000Z"
    )
    assert encode_query({"updated_at": {"$gte": datetime(2026, 1, 1, tzinfo=UTC)}}) == [
        ("updated_at[$gte]", "2026-01-01T00:00:00Z")
    ]


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(QueryEncodingError, match="naive"):
        encode_query({"updated_at": {"$gt": datetime(2026, 1, 1)}})


def test_scalars() -> None:
    class Colour(enum.Enum):
        RED = "red"

    assert encode_value(None) == "null"
    assert encode_value(True) == "true"
    assert encode_value(False) == "false"
    assert encode_value(1.5) == "1.5"
    assert encode_value(date(2026, 1, 2)) == "2026-01-02"
    assert encode_value(Colour.RED) == "red"
    with pytest.raises(QueryEncodingError):
        encode_value(object())


def test_empty_list_is_refused_rather_than_widening_the_query() -> None:
    with pytest.raises(QueryEncodingError, match=r"id\[\$in\]"):
        encode_query({"id": {"$in": []}})


def test_on_the_wire_brackets_survive_url_encoding() -> None:
    url = httpx.URL("http://api/conversations", params=encode_query({"id": {"$in": [1, 2]}, "$limit": 5}))
    assert url.params.get_list("id[$in][]") == ["1", "2"]
    assert url.params["$limit"] == "5"
