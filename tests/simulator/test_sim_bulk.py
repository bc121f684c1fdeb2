"""Bulk actions: exactly-one targeting, each action, processed_count."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from worker.simulator.testing import SimulatorHandle

from .helpers import assert_feathers_error

PATH = "/conversations-bulk-actions"


@pytest.fixture
def seeded(simulator: SimulatorHandle) -> SimulatorHandle:
    simulator.sim.seed(40, seed=5)
    return simulator


def records(handle: SimulatorHandle) -> list[dict[str, Any]]:
    return list(handle.sim.store.conversations.records.values())


@pytest.mark.parametrize(
    "targeting",
    [
        {},
        {"conversation_ids": [1], "view_id": 1},
        {"conversation_ids": [1], "filter": {"organization_id": 1}},
        {"view_id": 1, "filter": {"organization_id": 1}},
        {"conversation_ids": [1], "view_id": 1, "filter": {"organization_id": 1}},
    ],
)
def test_exactly_one_targeting_mode(seeded: SimulatorHandle, client: httpx.Client, targeting: Any) -> None:
    response = client.post(PATH, json={"action": "update_status", "status": "closed", **targeting})
    body = assert_feathers_error(response, 400, "BadRequest")
    assert "Exactly one of" in str(body["message"])
    assert seeded.sim.audit.applied() == []


@pytest.mark.parametrize(
    "body",
    [
        {"action": "explode", "conversation_ids": [1]},
        {"action": "assign", "conversation_ids": [1]},
        {"action": "assign", "owner_id": "x", "conversation_ids": [1]},
        {"action": "update_status", "status": "snoozed", "conversation_ids": [1]},
        {"action": "assign_ai_assistant", "conversation_ids": [1]},
        {"action": "move", "pipeline_id": 1, "conversation_ids": [1]},
        {"action": "move", "pipeline_id": 1, "pipeline_stage_id": 21, "conversation_ids": [1]},
        {"action": "unassign", "conversation_ids": ["1"]},
        {"action": "unassign", "view_id": "1"},
        {"action": "unassign", "filter": {"status": "open"}},
        {"action": "unassign", "filter": {"organization_id": 1, "owner_id": 3}},
        {"action": "unassign", "filter": {"organization_id": 1, "status": "pending"}},
    ],
)
def test_action_and_target_validation(seeded: SimulatorHandle, client: httpx.Client, body: Any) -> None:
    assert_feathers_error(client.post(PATH, json=body), 400, "BadRequest")


def test_filter_for_another_organization_is_forbidden(seeded: SimulatorHandle, client: httpx.Client) -> None:
    body = {"action": "unassign", "filter": {"organization_id": 2}}
    assert_feathers_error(client.post(PATH, json=body), 403, "Forbidden")


def test_unknown_view_is_not_found(seeded: SimulatorHandle, client: httpx.Client) -> None:
    assert_feathers_error(client.post(PATH, json={"action": "unassign", "view_id": 99}), 404, "NotFound")


def test_assign_by_ids_counts_existing_ones(seeded: SimulatorHandle, client: httpx.Client) -> None:
    seeded.clock.advance(30)
    body = {"action": "assign", "owner_id": 109, "conversation_ids": [1, 2, 2, 999]}
    result = client.post(PATH, json=body).json()
    assert result["processed_count"] == 2 and result["conversation_ids"] == [1, 2]
    for conversation_id in (1, 2):
        record = seeded.sim.conversation(conversation_id)
        assert record["owner_id"] == 109
        assert record["updated_at"] == record["assigned_at"] == seeded.clock.now()


def test_update_status_by_filter(seeded: SimulatorHandle, client: httpx.Client) -> None:
    target = [r["id"] for r in records(seeded) if r["status"] == "open" and r["channel"] == "whatsapp"]
    body = {
        "action": "update_status",
        "status": "closed",
        "filter": {"organization_id": 1, "status": "open", "channel": "whatsapp"},
    }
    result = client.post(PATH, json=body).json()
    assert result["processed_count"] == len(target) > 0
    assert all(seeded.sim.conversation(i)["status"] == "closed" for i in target)


def test_move_by_filter_on_stage(seeded: SimulatorHandle, client: httpx.Client) -> None:
    target = [r["id"] for r in records(seeded) if r["pipeline_id"] == 1 and r["pipeline_stage_id"] == 11]
    body = {
        "action": "move",
        "pipeline_id": 2,
        "pipeline_stage_id": 22,
        "filter": {"organization_id": 1, "pipeline_id": 1, "pipeline_stage_id": 11},
    }
    assert client.post(PATH, json=body).json()["processed_count"] == len(target) > 0
    moved = seeded.sim.conversation(target[0])
    assert (moved["pipeline_id"], moved["pipeline_stage_id"]) == (2, 22)
    assert moved["stage_entered_at"] == seeded.clock.now()


def test_view_targets_and_ai_assistant(seeded: SimulatorHandle, client: httpx.Client) -> None:
    unassigned_open = [r["id"] for r in records(seeded) if r["status"] == "open" and r["owner_id"] is None]
    result = client.post(PATH, json={"action": "assign_ai_assistant", "ai_assistant_id": 8, "view_id": 2})
    assert result.json()["processed_count"] == len(unassigned_open) > 0
    assert all(seeded.sim.conversation(i)["ai_assistant_id"] == 8 for i in unassigned_open)
    again = client.post(PATH, json={"action": "unassign_ai_assistant", "conversation_ids": unassigned_open})
    assert again.json()["processed_count"] == len(unassigned_open)
    assert all(seeded.sim.conversation(i)["ai_assistant_id"] is None for i in unassigned_open)


def test_custom_view(seeded: SimulatorHandle, client: httpx.Client) -> None:
    seeded.sim.add_view(10, {"channel": "sms"})
    target = [r for r in records(seeded) if r["channel"] == "sms"]
    owned = sum(1 for r in target if r["owner_id"] is not None)
    result = client.post(PATH, json={"action": "unassign", "view_id": 10}).json()
    assert result["processed_count"] == len(target) > owned > 0
    assert result["updated_count"] == owned
