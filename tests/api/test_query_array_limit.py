"""Finds with arrays over qs's default `arrayLimit` (20), against the simulator emulating it and
against the permissive one, over loopback sockets: the same answers, the limit learnt from one
400, a 400 without a long array left alone (worker/api/batching.py)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

from worker.api import errors
from worker.api.client import ApiClient
from worker.api.services import MessageRange, Services
from worker.clock import FakeClock
from worker.simulator.testing import SimulatorHandle, served_simulator

TOKEN = "qs-api-token"


@contextmanager
def api_on(array_limit: int | None) -> Iterator[tuple[Services, SimulatorHandle, list[int]]]:
    """A client on a seeded simulator (300 conversations) and the statuses it was answered."""
    with served_simulator(FakeClock(), TOKEN, array_limit=array_limit) as handle:
        handle.sim.seed(300, seed=3)
        statuses: list[int] = []
        client = ApiClient(
            handle.url,
            TOKEN,
            handle.sim.organization_id,
            clock=handle.clock,
            rng=random.Random(0),
            rate_limit_per_s=10_000,
            rate_burst=10_000,
            on_response=lambda _s, _m, status, _t: statuses.append(status),
        )
        with client:
            yield Services(client), handle, statuses


def both(read: Callable[[Services, SimulatorHandle], Any]) -> tuple[Any, Any, list[int], int]:
    results = []
    for limit in (None, 20):
        with api_on(limit) as (api, handle, statuses):
            results.append(read(api, handle))
            learnt = api.client.batch_limit
    return results[0], results[1], statuses, learnt


def ids_of(handle: SimulatorHandle, channel: str | None = None) -> list[int]:
    records = handle.sim.store.conversations.records.values()
    return sorted(r["id"] for r in records if channel is None or r["channel"] == channel)


def busiest_channel(handle: SimulatorHandle) -> str:
    counts: dict[str, int] = {}
    for record in handle.sim.store.conversations.records.values():
        counts[record["channel"]] = counts.get(record["channel"], 0) + 1
    return max(counts, key=lambda channel: counts[channel])


def test_a_long_in_list_is_refused_once_then_split() -> None:
    def read(api: Services, handle: SimulatorHandle) -> Any:
        wanted = ids_of(handle)[5:55]
        first = [c.id for c in api.conversations.find({"id": {"$in": wanted}})]
        second = [c.id for c in api.conversations.find({"id": {"$in": wanted[::-1]}})]
        return first, second

    permissive, limited, statuses, learnt = both(read)
    assert limited == permissive and len(permissive[0]) == 50
    assert statuses.count(400) == 1 and learnt == 20
    assert len(statuses) == 1 + 3 + 3  # the refused find, then 3 parts per 50 ids


@pytest.mark.parametrize("skip", [0, 13, 45, 49])
def test_one_page_of_a_long_in_list_is_the_same_page(skip: int) -> None:
    def read(api: Services, handle: SimulatorHandle) -> Any:
        query = {"id": {"$in": ids_of(handle)[::4][:50]}, "$sort": {"updated_at": -1}, "$limit": 7}
        page = api.client.find_page("/conversations", {**query, "$skip": skip})
        return page.total, page.skip, page.limit, [r["id"] for r in page.data]

    permissive, limited, _, _ = both(read)
    assert limited == permissive


def test_messages_of_50_conversations_keep_their_order() -> None:
    def read(api: Services, handle: SimulatorHandle) -> Any:
        channel = busiest_channel(handle)
        chosen = ids_of(handle, channel)[:50]
        whole = [m.id for m in api.messages.of_conversations(channel, chosen)]
        since = api.messages.since_many(channel, {cid: (None, False) for cid in chosen})
        return whole, {cid: [m.id for m in found] for cid, found in since.items()}

    permissive, limited, statuses, _ = both(read)
    assert limited == permissive and len(permissive[0]) > 50
    assert statuses.count(400) == 1


def test_packed_pages_cut_and_resume_as_one_find_would() -> None:
    def read(api: Services, handle: SimulatorHandle) -> Any:
        channel = busiest_channel(handle)
        chosen = ids_of(handle, channel)[:50]
        start = handle.clock.now() - timedelta(days=30)
        page = api.messages.packed_page(channel, {cid: MessageRange(start) for cid in chosen})
        cut = None if page.cut is None else (page.cut.conversation_id, page.cut.id)
        return {c: [m.id for m in ms] for c, ms in page.messages.items()}, sorted(page.complete), cut

    permissive, limited, statuses, _ = both(read)
    assert limited == permissive
    assert statuses.count(400) == 1


def test_a_long_nin_list_is_an_intersection_of_its_parts() -> None:
    def read(api: Services, handle: SimulatorHandle) -> Any:
        return [c.id for c in api.conversations.find({"id": {"$nin": ids_of(handle)[:45]}})]

    permissive, limited, statuses, learnt = both(read)
    assert limited == permissive and len(permissive) == 255
    assert statuses.count(400) == 1 and learnt == 20


def test_a_bad_request_without_a_long_array_is_not_retried() -> None:
    with api_on(20) as (api, handle, statuses):
        with pytest.raises(errors.BadRequest):
            list(api.conversations.find({"id": {"$in": ids_of(handle)[:20]}, "$where": "1"}))
        assert statuses == [400]
        assert api.client.batch_limit == 50


def test_the_permissive_server_takes_50_in_one_find() -> None:
    with api_on(None) as (api, _, statuses):
        assert len(api.contacts.by_ids(range(1, 51))) == 50
        assert statuses == [200]
        assert api.client.batch_limit == 50


def test_a_bad_request_whose_parts_are_refused_too_teaches_nothing() -> None:
    """A long array in a query refused for another reason: its first part of 20 is refused as
    well, that 400 stands and the limit stays 50."""
    with api_on(None) as (api, handle, statuses):
        with pytest.raises(errors.BadRequest):
            list(api.conversations.find({"id": {"$in": ids_of(handle)[:30]}, "$where": "1"}))
        with pytest.raises(errors.BadRequest):
            api.client.find_page("/conversations", {"id": {"$in": ids_of(handle)[:30]}, "$where": "1"})
        assert statuses == [400, 400, 400, 400]
        assert api.client.batch_limit == 50
