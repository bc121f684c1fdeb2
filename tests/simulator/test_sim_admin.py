"""Admin controls over HTTP: the other side of the conversation, time, reset."""

from __future__ import annotations

import httpx

from worker.clock import FakeClock, SystemClock
from worker.simulator import Simulator, serve
from worker.simulator.testing import SimulatorHandle

from .helpers import assert_feathers_error


def test_new_conversation_and_inbound(simulator: SimulatorHandle, client: httpx.Client) -> None:
    created = client.post("/__admin/conversations", json={"channel": "instagram", "message_text": "hey"})
    conversation = created.json()
    assert conversation["channel"] == "instagram" and conversation["unread_count"] == 1
    assert conversation["initiated_by"] == "customer" and conversation["status"] == "open"
    simulator.sim.human_change(conversation["id"], {"status": "closed"})
    simulator.clock.advance(30)
    message = client.post(
        "/__admin/inbound", json={"conversation_id": conversation["id"], "message_text": "?"}
    )
    assert message.json()["direction"] == "inbound"
    after = client.get(f"/conversations/{conversation['id']}").json()
    assert after["status"] == "open" and after["unread_count"] == 2
    assert after["last_inbound_at"] == after["last_message_at"] == after["updated_at"]
    assert after["updated_at"] == "2026-11-02T09:00:30.000Z"


def test_team_reply_and_reassign(simulator: SimulatorHandle, client: httpx.Client) -> None:
    conversation = simulator.sim.new_conversation(channel="whatsapp")
    simulator.clock.advance(60)
    reply = client.post(
        "/__admin/team-reply", json={"conversation_id": 1, "message_text": "hi", "user_id": 103}
    )
    assert reply.json()["sender_type"] == "user" and reply.json()["user_id"] == 103
    after = simulator.sim.conversation(conversation["id"])
    assert after["last_outbound_at"] == simulator.clock.now() and after["unread_count"] == 0
    reassigned = client.post("/__admin/reassign", json={"conversation_id": 1, "owner_id": 104}).json()
    assert reassigned["owner_id"] == 104 and reassigned["assigned_at"] == "2026-11-02T09:01:00.000Z"
    assert simulator.sim.audit_log() == []  # admin calls are not API calls
    simulator.clock.advance(2 * 86400)
    late = client.post("/__admin/team-reply", json={"conversation_id": 1})
    assert_feathers_error(late, 422, "Unprocessable")


def test_clock_controls(simulator: SimulatorHandle, client: httpx.Client) -> None:
    assert client.get("/__admin/clock").json() == {"now": "2026-11-02T09:00:00.000Z"}
    assert client.post("/__admin/clock", json={"advance_s": 90}).json()["now"] == "2026-11-02T09:01:30.000Z"
    moved = client.post("/__admin/clock", json={"set": "2026-12-01T00:00:00Z"}).json()
    assert moved["now"] == "2026-12-01T00:00:00.000Z"
    assert isinstance(simulator.clock, FakeClock) and simulator.clock.now().month == 12


def test_system_clock_cannot_be_moved() -> None:
    sim = Simulator(clock=SystemClock(), token="t")
    with serve(sim.app) as server:
        response = httpx.post(
            f"{server.url}/__admin/clock", json={"advance_s": 5}, headers={"Authorization": "Bearer t"}
        )
    assert_feathers_error(response, 409, "Conflict")


def test_reset_and_seed(simulator: SimulatorHandle, client: httpx.Client) -> None:
    assert client.post("/__admin/seed", json={"n": 25, "seed": 1}).json() == {"conversations": 25}
    client.patch("/conversations/1", json={"status": "closed"})
    simulator.sim.set_faults(error_rate=0.0, latency_s=0.0)
    assert client.post("/__admin/reset", json={}).json() == {"conversations": 0}
    assert simulator.sim.audit_log() == []
    assert client.post("/__admin/reset", json={"n": 5}).json() == {"conversations": 5}
    state = client.get("/__admin/state").json()
    assert state["counts"]["conversations"] == 5 and state["organization_id"] == 1


def test_unknown_admin_call_and_bad_body(client: httpx.Client) -> None:
    assert_feathers_error(client.post("/__admin/nope", json={}), 404, "NotFound")
    assert_feathers_error(client.post("/__admin/inbound", json={}), 400, "BadRequest")
    assert_feathers_error(client.post("/__admin/inbound", json={"conversation_id": 5}), 404, "NotFound")
