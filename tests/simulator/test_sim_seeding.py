"""Seeding: deterministic, varied, internally consistent."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from worker.clock import FakeClock
from worker.simulator import Simulator
from worker.simulator.seeding import SPREAD_DAYS
from worker.simulator.store import PIPELINES, to_wire


def seeded(n: int, seed: int) -> Simulator:
    sim = Simulator(clock=FakeClock(), token="t")
    sim.seed(n, seed=seed)
    return sim


def snapshot(sim: Simulator) -> object:
    store = sim.store
    return to_wire(
        [
            list(store.conversations.records.values()),
            list(store.contacts.records.values()),
            [list(c.records.values()) for c in store.messages.values()],
        ]
    )


def test_same_seed_same_data_and_different_seed_differs() -> None:
    assert snapshot(seeded(200, 7)) == snapshot(seeded(200, 7))
    assert snapshot(seeded(200, 7)) != snapshot(seeded(200, 8))


def test_seeded_data_is_varied() -> None:
    records = list(seeded(1000, 1).store.conversations.records.values())
    channels = Counter(r["channel"] for r in records)
    assert set(channels) == {"whatsapp", "instagram", "messenger", "webchat", "sms", "playground"}
    statuses = Counter(r["status"] for r in records)
    assert statuses["open"] > statuses["closed"] > 0
    owners = {r["owner_id"] for r in records}
    assert None in owners and owners - {None} == set(range(101, 111))
    assert {r["pipeline_id"] for r in records} == {1, 2}
    assert any(r["tags"] for r in records) and any(not r["tags"] for r in records)
    assert {r["initiated_by"] for r in records} == {"customer", "team"}


def test_seeded_records_are_consistent() -> None:
    sim = seeded(300, 2)
    now = sim.clock.now()
    for record in sim.store.conversations.records.values():
        assert record["pipeline_stage_id"] in PIPELINES[record["pipeline_id"]]
        assert now - timedelta(days=SPREAD_DAYS) <= record["created_at"] <= record["updated_at"] <= now
        assert record["last_message_at"] == record["updated_at"]
        assert (record["assigned_at"] is None) == (record["owner_id"] is None)
        messages = sim.messages(record["id"])
        assert 1 <= len(messages) <= 4
        inbound = [m["created_at"] for m in messages if m["direction"] == "inbound"]
        assert record["last_inbound_at"] == (inbound[-1] if inbound else None)
        assert sim.store.contacts.get(record["contact_id"])["id"] == record["contact_id"]


def test_ids_continue_after_seeding() -> None:
    sim = seeded(10, 3)
    created = sim.new_conversation()
    assert created["id"] == 11 and created["contact_id"] == 11
    message_ids = [m["_id"] for c in sim.store.messages.values() for m in c.records.values()]
    assert len(message_ids) == len(set(message_ids))


@pytest.mark.slow
def test_seeds_100k_and_the_index_answers() -> None:
    sim = seeded(100_000, 4)
    assert len(sim.store.conversations) == 100_000
    assert len(sim.store.conversations.index) == 100_000
