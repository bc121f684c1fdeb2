"""Idempotency-Key replay and the audit log."""

from __future__ import annotations

import httpx

from worker.simulator.testing import SimulatorHandle

SEND = "/conversation-messages-transform-outgoing-webchat"


def test_same_key_replays_without_applying_twice(simulator: SimulatorHandle, client: httpx.Client) -> None:
    conversation = simulator.sim.new_conversation(channel="webchat")
    body = {"conversation_id": conversation["id"], "message_text": "once"}
    first = client.post(SEND, json=body, headers={"Idempotency-Key": "fire-1"})
    simulator.clock.advance(10)
    second = client.post(SEND, json=body, headers={"Idempotency-Key": "fire-1"})
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert [m["message_text"] for m in simulator.sim.messages(conversation["id"])].count("once") == 1
    outcomes = [(e.outcome, e.applied, e.idempotency_key) for e in simulator.sim.audit_log()]
    assert outcomes == [("applied", True, "fire-1"), ("replay", False, "fire-1")]


def test_key_is_scoped_by_path(simulator: SimulatorHandle, client: httpx.Client) -> None:
    simulator.sim.new_conversation()
    headers = {"Idempotency-Key": "same"}
    client.patch("/conversations/1", json={"owner_id": 101}, headers=headers)
    client.post(
        "/conversation-predefined-messages", json={"title": "t", "message_text": "m"}, headers=headers
    )
    assert [e.outcome for e in simulator.sim.audit_log()] == ["applied", "applied"]


def test_patch_replay_returns_the_first_response(simulator: SimulatorHandle, client: httpx.Client) -> None:
    simulator.sim.new_conversation()
    headers = {"Idempotency-Key": "p-1"}
    first = client.patch("/conversations/1", json={"owner_id": 101}, headers=headers).json()
    simulator.sim.reassign(1, 102)  # a human changes it in between
    replay = client.patch("/conversations/1", json={"owner_id": 101}, headers=headers).json()
    assert replay == first and simulator.sim.conversation(1)["owner_id"] == 102


def test_rejected_calls_are_not_remembered(simulator: SimulatorHandle, client: httpx.Client) -> None:
    conversation = simulator.sim.new_conversation(channel="whatsapp")
    simulator.clock.advance(48 * 3600)
    body = {"conversation_id": conversation["id"], "message_text": "late"}
    path = "/conversation-messages-transform-outgoing-whatsapp"
    assert client.post(path, json=body, headers={"Idempotency-Key": "k"}).status_code == 422
    simulator.sim.customer_message(conversation["id"])
    assert client.post(path, json=body, headers={"Idempotency-Key": "k"}).status_code == 201
    assert [e.outcome for e in simulator.sim.audit_log()] == ["rejected", "applied"]


def test_audit_records_every_mutating_call_in_order(simulator: SimulatorHandle, client: httpx.Client) -> None:
    simulator.sim.new_conversation()
    client.get("/conversations")  # reads are not audited
    client.patch("/conversations/1", json={"status": "closed"})
    client.patch("/conversations/1", json={"status": "nope"})
    client.delete("/conversations/1")
    httpx.post(f"{simulator.url}/conversation-predefined-messages", json={"title": "x"})  # no token
    entries = simulator.sim.audit_log()
    assert [(e.seq, e.method, e.path, e.status, e.outcome) for e in entries] == [
        (1, "PATCH", "/conversations/1", 200, "applied"),
        (2, "PATCH", "/conversations/1", 400, "rejected"),
        (3, "DELETE", "/conversations/1", 200, "applied"),
        (4, "POST", "/conversation-predefined-messages", 401, "rejected"),
    ]
    assert entries[0].body == {"status": "closed"} and entries[0].time == simulator.clock.now()
    assert [e.seq for e in simulator.sim.audit_log(since=2)] == [3, 4]
    assert [e.path for e in simulator.sim.audit.applied("DELETE")] == ["/conversations/1"]


def test_audit_over_http(simulator: SimulatorHandle, client: httpx.Client) -> None:
    simulator.sim.new_conversation()
    client.patch("/conversations/1", json={"tags": ["a"]}, headers={"Idempotency-Key": "t-1"})
    entries = client.get("/__admin/audit").json()["entries"]
    assert len(entries) == 1
    entry = entries[0]
    assert entry["applied"] is True and entry["idempotency_key"] == "t-1"
    assert entry["time"] == "2026-11-02T09:00:00.000Z" and entry["body"] == {"tags": ["a"]}
    assert client.get("/__admin/audit", params={"since": 1}).json()["entries"] == []
