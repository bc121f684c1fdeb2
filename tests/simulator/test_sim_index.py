"""The (updated_at, id) index: same answers as a full scan, under ties and concurrent changes."""

from __future__ import annotations

import itertools
import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from worker.clock import FakeClock
from worker.simulator import Simulator
from worker.simulator.query import find_in, parse_find, parse_query_string
from worker.simulator.store import to_wire
from worker.simulator.testing import SimulatorHandle

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def tied_simulator() -> Simulator:
    """300 conversations whose updated_at take only 6 distinct values (many ties)."""
    sim = Simulator(clock=FakeClock(T0), token="t")
    sim.seed(300, seed=9)
    rng = random.Random(1)
    collection = sim.store.conversations
    for record in list(collection.records.values()):
        collection.set_updated_at(record, T0 - timedelta(minutes=rng.randrange(6)))
    return sim


def wire(moment: datetime) -> str:
    return str(to_wire(moment))


QUERIES = [
    f"updated_at[$gte]={wire(T0 - timedelta(minutes=3))}&$sort[updated_at]=1&$sort[id]=1&$limit=50",
    f"updated_at[$gt]={wire(T0 - timedelta(minutes=3))}&$sort[updated_at]=1&$limit=50&$skip=20",
    f"updated_at[$lte]={wire(T0 - timedelta(minutes=2))}&$sort[updated_at]=-1&$sort[id]=-1&$limit=50",
    f"updated_at[$lt]={wire(T0 - timedelta(minutes=2))}&updated_at[$gte]={wire(T0 - timedelta(minutes=4))}"
    "&$sort[updated_at]=1&$sort[id]=1&$limit=7&$skip=3",
    f"updated_at[$gte]={wire(T0 - timedelta(minutes=5))}&status=open"
    "&$sort[updated_at]=1&$sort[id]=1&$limit=50",
    f"updated_at[$gte]={wire(T0 - timedelta(minutes=5))}&status=open&$sort[created_at]=-1&$limit=50",
    "$sort[updated_at]=1&$sort[id]=1&$limit=50&$skip=250",
    "$sort[updated_at]=-1&$sort[id]=-1&$limit=50&owner_id=null",
    f"updated_at[$gte]={wire(T0 + timedelta(minutes=1))}&$sort[updated_at]=1&$limit=50",
    "$sort[updated_at]=-1&$limit=50",
]


@pytest.mark.parametrize("raw", QUERIES)
def test_index_matches_a_full_scan_under_ties(raw: str) -> None:
    sim = tied_simulator()
    params = parse_find(parse_query_string(raw))
    scan_params = parse_find(parse_query_string(raw))
    records = sorted(sim.store.conversations.records.values(), key=lambda r: r["id"])
    expected = find_in(records, scan_params)
    assert sim.store.conversations.find(params) == expected


def test_index_bounds_directly() -> None:
    sim = tied_simulator()
    index = sim.store.conversations.index
    at = T0 - timedelta(minutes=2)
    lo, hi = index.bounds({"$gte": at, "$lte": at})
    ids = list(index.ids(lo, hi))
    expected = sorted(r["id"] for r in sim.store.conversations.records.values() if r["updated_at"] == at)
    assert ids == expected and len(ids) > 1


def assert_index_consistent(sim: Simulator) -> None:
    with sim.lock:
        records = sim.store.conversations.records.values()
        expected = sorted((r["updated_at"], r["id"]) for r in records)
        index = sim.store.conversations.index
        assert list(index.ids(0, len(index))) == [record_id for _, record_id in expected]


@pytest.mark.slow
def test_concurrent_changes_keep_the_index_right(simulator: SimulatorHandle) -> None:
    sim, clock = simulator.sim, simulator.clock
    sim.seed(200, seed=3)
    stop = threading.Event()
    errors: list[Any] = []

    def mutate(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=simulator.url, headers=simulator.headers) as http:
            for step in itertools.count():
                if stop.is_set() or step >= 150:
                    return
                target = rng.randrange(1, 200)
                choice = step % 3
                if choice == 0:
                    sim.customer_message(target)
                elif choice == 1:
                    sim.new_conversation(channel="webchat")
                else:
                    response = http.patch(
                        f"/conversations/{target}", json={"owner_id": rng.choice([None, 101])}
                    )
                    if response.status_code != 200:
                        errors.append(response.text)
                if step % 10 == 0:
                    clock.advance(0.001 * rng.randrange(3))  # ties and tiny steps

    def read() -> None:
        with httpx.Client(base_url=simulator.url, headers=simulator.headers) as http:
            while not stop.is_set():
                since = to_wire(clock.now() - timedelta(days=1))
                page = http.get(
                    "/conversations",
                    params={"updated_at[$gte]": since, "$sort[updated_at]": 1, "$sort[id]": 1, "$limit": 50},
                )
                if page.status_code != 200:
                    errors.append(page.text)
                    continue
                keys = [(r["updated_at"], r["id"]) for r in page.json()["data"]]
                if keys != sorted(keys):
                    errors.append(keys)

    writers = [threading.Thread(target=mutate, args=(n,)) for n in range(3)]
    reader = threading.Thread(target=read)
    for thread in [*writers, reader]:
        thread.start()
    for thread in writers:
        thread.join(60)
    stop.set()
    reader.join(60)
    assert errors == []
    assert len(sim.store.conversations) == 200 + 150
    assert_index_consistent(sim)


def test_paging_sees_each_unchanged_record_once_while_new_ones_arrive(
    simulator: SimulatorHandle, client: httpx.Client
) -> None:
    """Paging sorted on (updated_at, id) with $skip: inserts land after the cursor, nothing repeats."""
    sim = simulator.sim
    sim.seed(120, seed=4)
    simulator.clock.advance(1)
    seen: list[int] = []
    skip = 0
    while True:
        page = client.get(
            "/conversations", params={"$sort[updated_at]": 1, "$sort[id]": 1, "$limit": 50, "$skip": skip}
        ).json()
        seen += [r["id"] for r in page["data"]]
        skip += len(page["data"])
        if len(page["data"]) < page["limit"]:
            break
        sim.new_conversation()  # newer updated_at than everything seeded: sorts after the cursor
    assert sorted(seen[:120]) == list(range(1, 121))
    assert seen[120:] == [121, 122]  # the two added while paging, after the cursor
    assert len(seen) == len(set(seen))


def test_fresh_simulator_index_is_consistent() -> None:
    sim = tied_simulator()
    assert_index_consistent(sim)


BY_ID_QUERIES = [
    "status=open&$sort[id]=1&$limit=50",
    "status=open&$sort[id]=1&$limit=50&$skip=120",
    "owner_id[$in][]=101&owner_id[$in][]=102&status=open&$sort[id]=1&$limit=50",
    "$sort[id]=1&$limit=50&$skip=290",
]


@pytest.mark.parametrize("raw", BY_ID_QUERIES)
def test_pages_by_id_match_a_full_scan_before_and_after_changes(raw: str) -> None:
    """The id-order pages are kept between finds (the resync pages 2,000 of them at 100k);
    each kind of change must show in the next find exactly as a full scan shows it."""
    sim = tied_simulator()
    collection = sim.store.conversations

    def check() -> None:
        records = sorted(collection.records.values(), key=lambda r: r["id"])
        expected = find_in(records, parse_find(parse_query_string(raw)))
        assert collection.find(parse_find(parse_query_string(raw))) == expected

    check()
    opened = [r for r in collection.records.values() if r["status"] == "open"]
    sim.store.change_conversation(opened[3], {"status": "closed"})  # leaves the open pages
    check()
    sim.store.change_conversation(opened[7], {"owner_id": 101})
    check()
    sim.new_conversation(channel="sms", text="new")  # joins them
    check()
    collection.remove(opened[0]["id"])
    check()
