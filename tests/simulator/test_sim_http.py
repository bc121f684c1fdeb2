"""Feathers semantics over real loopback HTTP: envelope, clamp, errors, auth, services."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from worker.simulator.testing import SimulatorHandle

from .helpers import assert_feathers_error


def test_find_envelope_clamps_limit_at_50_and_reports_total(
    simulator: SimulatorHandle, client: httpx.Client
) -> None:
    simulator.sim.seed(120, seed=3)
    open_total = sum(1 for r in simulator.sim.store.conversations.records.values() if r["status"] == "open")
    body = client.get("/conversations", params={"$limit": 100, "status": "open"}).json()
    assert body.keys() == {"total", "limit", "skip", "data"}
    assert (body["total"], body["limit"], body["skip"], len(body["data"])) == (open_total, 50, 0, 50)
    assert all(record["status"] == "open" for record in body["data"])


def test_find_default_limit_is_10_and_skip_pages(simulator: SimulatorHandle, client: httpx.Client) -> None:
    simulator.sim.seed(30, seed=1)
    first = client.get("/conversations").json()
    assert (first["limit"], len(first["data"]), first["total"]) == (10, 10, 30)
    later = client.get("/conversations", params={"$skip": 25, "$sort[id]": 1}).json()
    assert [r["id"] for r in later["data"]] == [26, 27, 28, 29, 30]


def test_limit_zero_counts_only(simulator: SimulatorHandle, client: httpx.Client) -> None:
    simulator.sim.seed(12, seed=1)
    assert client.get("/conversations", params={"$limit": 0}).json() == {
        "total": 12,
        "limit": 0,
        "skip": 0,
        "data": [],
    }


def test_datetimes_are_iso_with_milliseconds_and_z(simulator: SimulatorHandle, client: httpx.Client) -> None:
    simulator.sim.new_conversation()
    record = client.get("/conversations/1").json()
    assert record["created_at"] == "2026-11-02T09:00:00.000Z"
    assert record["updated_at"].endswith("Z") and len(record["updated_at"]) == 24


def test_select_and_sort_over_http(simulator: SimulatorHandle, client: httpx.Client) -> None:
    simulator.sim.seed(20, seed=2)
    body = client.get("/conversations?$select[]=status&$sort[id]=-1&$limit=3").json()
    assert body["data"] == [
        {"id": i, "status": simulator.sim.conversation(i)["status"]} for i in (20, 19, 18)
    ]


def test_missing_token_is_401_feathers_body(anonymous: httpx.Client) -> None:
    body = assert_feathers_error(anonymous.get("/conversations"), 401, "NotAuthenticated")
    assert body["className"] == "not-authenticated"


def test_wrong_token_is_401_and_not_echoed(simulator: SimulatorHandle, anonymous: httpx.Client) -> None:
    response = anonymous.get("/conversations", headers={"Authorization": "Bearer nope-secret"})
    assert_feathers_error(response, 401, "NotAuthenticated")
    assert "nope-secret" not in response.text
    assert simulator.token not in response.text and simulator.token not in repr(simulator)


def test_admin_needs_the_token_too(anonymous: httpx.Client) -> None:
    assert_feathers_error(anonymous.get("/__admin/clock"), 401, "NotAuthenticated")


@pytest.mark.parametrize(
    ("method", "path", "code", "name"),
    [
        ("GET", "/no-such-service", 404, "NotFound"),
        ("GET", "/a/b/c", 404, "NotFound"),
        ("GET", "/conversations/999", 404, "NotFound"),
        ("GET", "/conversations/abc", 404, "NotFound"),
        ("PATCH", "/contacts/1", 405, "MethodNotAllowed"),
        ("POST", "/conversations", 405, "MethodNotAllowed"),
        ("PATCH", "/conversations", 405, "MethodNotAllowed"),
        ("POST", "/conversation-messages-whatsapp", 405, "MethodNotAllowed"),
        ("GET", "/conversations?organization_id=2", 403, "Forbidden"),
        ("GET", "/conversations?id[$regex]=1", 400, "BadRequest"),
        ("GET", "/conversations?$limit=many", 400, "BadRequest"),
        ("GET", "/conversations?updated_at[$gte]=not-a-date&$sort[updated_at]=1", 400, "BadRequest"),
    ],
)
def test_error_statuses(client: httpx.Client, method: str, path: str, code: int, name: str) -> None:
    assert_feathers_error(client.request(method, path), code, name)


def test_invalid_json_is_400(simulator: SimulatorHandle, client: httpx.Client) -> None:
    simulator.sim.new_conversation()
    response = client.patch(
        "/conversations/1", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert_feathers_error(response, 400, "BadRequest")
    assert_feathers_error(client.patch("/conversations/1", json=[1, 2]), 400, "BadRequest")


def test_patch_bumps_updated_at_and_sets_extensions(simulator: SimulatorHandle, client: httpx.Client) -> None:
    simulator.sim.new_conversation()
    simulator.clock.advance(60)
    patched = client.patch("/conversations/1", json={"owner_id": 105, "pipeline_stage_id": 12}).json()
    assert patched["owner_id"] == 105
    assert patched["updated_at"] == patched["assigned_at"] == patched["stage_entered_at"]
    assert patched["updated_at"] == "2026-11-02T09:01:00.000Z"
    simulator.clock.advance(60)
    unassigned = client.patch("/conversations/1", json={"owner_id": None, "tags": ["vip"]}).json()
    assert unassigned["assigned_at"] == "2026-11-02T09:02:00.000Z" and unassigned["tags"] == ["vip"]
    assert unassigned["stage_entered_at"] == "2026-11-02T09:01:00.000Z"


def test_noop_patch_does_not_bump(simulator: SimulatorHandle, client: httpx.Client) -> None:
    simulator.sim.new_conversation()
    before = client.get("/conversations/1").json()["updated_at"]
    simulator.clock.advance(60)
    assert client.patch("/conversations/1", json={"status": "open"}).json()["updated_at"] == before


@pytest.mark.parametrize(
    "body",
    [
        {"updated_at": "2026-01-01T00:00:00Z"},
        {"last_outbound_at": None},
        {"status": "pending"},
        {"owner_id": "105"},
        {"pipeline_stage_id": 21},  # a stage of pipeline 2 while the conversation is in pipeline 1
        {"tags": "vip"},
        {"unread_count": -1},
    ],
)
def test_patch_validation(simulator: SimulatorHandle, client: httpx.Client, body: dict[str, object]) -> None:
    simulator.sim.new_conversation()
    assert_feathers_error(client.patch("/conversations/1", json=body), 400, "BadRequest")


def test_patch_with_other_organization_is_forbidden(simulator: SimulatorHandle, client: httpx.Client) -> None:
    simulator.sim.new_conversation()
    response = client.patch("/conversations/1", json={"organization_id": 9, "status": "closed"})
    assert_feathers_error(response, 403, "Forbidden")


def test_remove_conversation_removes_its_messages(simulator: SimulatorHandle, client: httpx.Client) -> None:
    simulator.sim.new_conversation(channel="sms")
    assert client.delete("/conversations/1").json()["id"] == 1
    assert client.get("/conversations/1").status_code == 404
    assert client.get("/conversation-messages-sms", params={"conversation_id": 1}).json()["total"] == 0


def test_messages_find_get_remove(simulator: SimulatorHandle, client: httpx.Client) -> None:
    conversation = simulator.sim.new_conversation(channel="webchat")
    simulator.clock.advance(5)
    simulator.sim.customer_message(conversation["id"], "second")
    page = client.get(
        "/conversation-messages-webchat",
        params={"conversation_id": conversation["id"], "$sort[created_at]": -1, "$limit": 50},
    ).json()
    assert [m["message_text"] for m in page["data"]] == ["second", "Hi, I need help"]
    newest = page["data"][0]
    assert client.get(f"/conversation-messages-webchat/{newest['_id']}").json() == newest
    assert len(newest["_id"]) == 24
    simulator.clock.advance(5)
    assert client.delete(f"/conversation-messages-webchat/{newest['_id']}").status_code == 200
    assert client.get(f"/conversation-messages-webchat/{newest['_id']}").status_code == 404
    assert simulator.sim.conversation(conversation["id"])["updated_at"] == simulator.clock.now()


def test_contacts_get_and_find(simulator: SimulatorHandle, client: httpx.Client) -> None:
    simulator.sim.seed(5, seed=1)
    contact = client.get("/contacts/3").json()
    assert contact["id"] == 3 and contact["name"]
    assert client.get("/contacts", params={"id[$in][]": [1, 2]}).json()["total"] == 2


def test_predefined_messages_crud(simulator: SimulatorHandle, client: httpx.Client) -> None:
    created = client.post("/conversation-predefined-messages", json={"title": "Hi", "message_text": "Hello!"})
    assert created.status_code == 201
    record_id = created.json()["id"]
    patched = client.patch(f"/conversation-predefined-messages/{record_id}", json={"title": "Hey"}).json()
    assert patched["title"] == "Hey"
    assert client.get("/conversation-predefined-messages", params={"title": "Hey"}).json()["total"] == 1
    assert client.delete(f"/conversation-predefined-messages/{record_id}").status_code == 200
    assert client.get(f"/conversation-predefined-messages/{record_id}").status_code == 404
    missing = client.post("/conversation-predefined-messages", json={"title": "x"})
    assert_feathers_error(missing, 400, "BadRequest")


def test_automation_execution_is_stored(simulator: SimulatorHandle, client: httpx.Client) -> None:
    conversation = simulator.sim.new_conversation()
    body = {
        "automation_id": 44,
        "organization_id": 1,
        "conversation_id": conversation["id"],
        "initial_payload": {"conversation": {"id": 1}, "contact": None, "messages": []},
    }
    response = client.post("/automations-executions", json=body)
    assert response.status_code == 201
    execution = response.json()
    assert execution["_id"] and execution["automation_id"] == 44
    stored = simulator.sim.store.executions.get(execution["_id"])
    assert stored["initial_payload"] == body["initial_payload"]
    found = client.get("/automations-executions", params={"conversation_id": conversation["id"]}).json()
    assert found["total"] == 1
    bad = {**body, "initial_payload": {"conversation": {}}}
    assert_feathers_error(client.post("/automations-executions", json=bad), 400, "BadRequest")
    other_org = {**body, "organization_id": 2}
    assert_feathers_error(client.post("/automations-executions", json=other_org), 403, "Forbidden")


def test_upload_flow_signing_put_and_file_record(simulator: SimulatorHandle, client: httpx.Client) -> None:
    conversation = simulator.sim.new_conversation()
    signed = client.post("/s3-url-signing", json={"file_name": "photo 1.png", "organization_id": 1}).json()
    assert signed["url"].startswith(simulator.url) and "X-Amz-Signature=" in signed["url"]
    assert httpx.put(signed["url"], content=b"png-bytes").status_code == 200
    assert simulator.sim.store.uploads[signed["s3_key"]] == 9
    assert httpx.put(signed["url"].split("?")[0], content=b"x").status_code == 403
    file_body = {
        "conversation_id": conversation["id"],
        "organization_id": 1,
        "file_name": "photo 1.png",
        "file_type": "image/png",
        "file_size": 9,
        "s3_key": signed["s3_key"],
        "s3_path": signed["s3_path"],
        "file_category": "image",
    }
    created = client.post("/conversation-files", json=file_body)
    assert created.status_code == 201 and len(created.json()["_id"]) == 24
    bad = client.post("/conversation-files", json={**file_body, "file_category": "pdf"})
    assert_feathers_error(bad, 400, "BadRequest")
    never_put = client.post("/conversation-files", json={**file_body, "s3_key": "org-1/uploads/x/y.png"})
    assert_feathers_error(never_put, 400, "BadRequest")
    assert [e.body["size"] for e in simulator.sim.audit.applied("PUT", "/__uploads/")] == [9]


def test_a_send_carries_only_a_file_of_its_own_conversation(
    simulator: SimulatorHandle, client: httpx.Client
) -> None:
    mine, other = (simulator.sim.new_conversation(channel="webchat") for _ in range(2))
    signed = client.post("/s3-url-signing", json={"file_name": "a.pdf", "organization_id": 1}).json()
    httpx.put(signed["url"], content=b"%PDF-1.4")
    file_body = {
        "conversation_id": mine["id"], "organization_id": 1, "file_name": "a.pdf",
        "file_type": "application/pdf", "file_size": 8, "s3_key": signed["s3_key"],
        "s3_path": signed["s3_path"], "file_category": "file",
    }  # fmt: skip
    file_id = client.post("/conversation-files", json=file_body).json()["_id"]
    path = "/conversation-messages-transform-outgoing-webchat"
    send = {"message_text": "here", "conversation_file_id": file_id}
    assert client.post(path, json={**send, "conversation_id": mine["id"]}).status_code == 201
    wrong = client.post(path, json={**send, "conversation_id": other["id"]})
    assert_feathers_error(wrong, 400, "BadRequest")


def test_playground_needs_organization_and_contact(simulator: SimulatorHandle, client: httpx.Client) -> None:
    conversation = simulator.sim.new_conversation(channel="playground")
    base = {"conversation_id": conversation["id"], "message_text": "hi"}
    assert_feathers_error(client.post("/conversation-messages-playground", json=base), 400, "BadRequest")
    with_org = {**base, "organization_id": 1}
    assert_feathers_error(client.post("/conversation-messages-playground", json=with_org), 400, "BadRequest")
    full = {**with_org, "contact_id": conversation["contact_id"]}
    assert client.post("/conversation-messages-playground", json=full).status_code == 201


def test_sms_send_and_channel_mismatch(simulator: SimulatorHandle, client: httpx.Client) -> None:
    sms = simulator.sim.new_conversation(channel="sms")
    simulator.clock.advance(timedelta(days=3))  # no window on sms
    sent = client.post(
        "/conversation-messages-sms", json={"conversation_id": sms["id"], "message_text": "hi"}
    )
    assert sent.status_code == 201 and sent.json()["direction"] == "outbound"
    wrong = client.post(
        "/conversation-messages-transform-outgoing-webchat",
        json={"conversation_id": sms["id"], "message_text": "hi"},
    )
    assert_feathers_error(wrong, 400, "BadRequest")
    missing = client.post(
        "/conversation-messages-transform-outgoing-webchat",
        json={"conversation_id": 999, "message_text": "x"},
    )
    assert_feathers_error(missing, 404, "NotFound")
