"""Service helpers: the exact paths, queries and bodies they send (MockTransport)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from worker.api.client import ApiClient
from worker.api.errors import MalformedResponse
from worker.api.models import Conversation
from worker.api.services import SEND_PATHS, Services
from worker.clock import FakeClock

ORG = 7
Route = Callable[[httpx.Request], Any]


class FakeApi:
    """Answers by (method, path); records each request."""

    def __init__(self, routes: dict[tuple[str, str], Route | Any]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.routes.get((request.method, request.url.path))
        if answer is None:
            return httpx.Response(404, json={"name": "NotFound", "message": "no route", "code": 404})
        body = answer(request) if callable(answer) else answer
        return httpx.Response(200, json=body)


def services(api: FakeApi, clock: FakeClock) -> Services:
    client = ApiClient(
        "http://api.test",
        "tok-services-test",
        ORG,
        transport=httpx.MockTransport(api),
        clock=clock,
        rng=random.Random(0),
    )
    return Services(client)


def page(data: list[dict[str, Any]], total: int | None = None) -> dict[str, Any]:
    return {"total": len(data) if total is None else total, "limit": 50, "skip": 0, "data": data}


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


CONV = {"id": 5, "channel": "whatsapp", "contact_id": 9, "organization_id": ORG, "status": "open"}


def test_changed_since_filters_and_sorts_on_updated_at_then_id(clock: FakeClock) -> None:
    api = FakeApi({("GET", "/conversations"): page([CONV])})
    got = list(services(api, clock).conversations.changed_since(clock.now()))
    assert [c.id for c in got] == [5]
    params = api.requests[0].url.params
    assert params["updated_at[$gte]"] == "2026-11-02T09:00:00Z"
    assert params["organization_id"] == str(ORG)
    sort_keys = [(k, v) for k, v in params.multi_items() if k.startswith("$sort")]
    assert sort_keys == [("$sort[updated_at]", "1"), ("$sort[id]", "1")]


def test_conversation_get_patch_remove(clock: FakeClock) -> None:
    api = FakeApi(
        {
            ("GET", "/conversations/5"): CONV,
            ("PATCH", "/conversations/5"): {**CONV, "status": "closed"},
            ("DELETE", "/conversations/5"): CONV,
        }
    )
    svc = services(api, clock).conversations
    assert svc.get(5).channel == "whatsapp"
    assert api.requests[0].url.params["organization_id"] == str(ORG)
    assert svc.patch(5, {"status": "closed"}, idempotency_key="k").status == "closed"
    assert body_of(api.requests[1]) == {"status": "closed"}
    assert api.requests[1].headers["idempotency-key"] == "k"
    svc.remove(5)
    assert api.requests[2].method == "DELETE"


def test_contact_get(clock: FakeClock) -> None:
    api = FakeApi({("GET", "/contacts/9"): {"id": 9, "name": "Ana", "vip": True}})
    contact = services(api, clock).contacts.get(9)
    assert contact.name == "Ana"
    assert contact.extra_fields() == {"vip": True}


def test_messages_latest_is_newest_first_one_page(clock: FakeClock) -> None:
    msgs = [{"_id": "b", "conversation_id": 5, "direction": "inbound"}]
    api = FakeApi({("GET", "/conversation-messages-sms"): page(msgs)})
    got = services(api, clock).messages.latest("sms", 5, limit=10)
    assert [m.id for m in got] == ["b"]
    params = api.requests[0].url.params
    assert (params["conversation_id"], params["$limit"]) == ("5", "10")
    assert (params["$sort[created_at]"], params["$sort[_id]"]) == ("-1", "-1")


def test_messages_all_for_dedupes_on_underscore_id(clock: FakeClock) -> None:
    msgs = [{"_id": "a", "conversation_id": 5, "direction": "inbound"}] * 2
    api = FakeApi({("GET", "/conversation-messages-webchat"): page(msgs)})
    got = list(services(api, clock).messages.all_for("webchat", 5))
    assert [m.id for m in got] == ["a"]


def test_unknown_channel_is_refused(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="unknown channel"):
        services(FakeApi({}), clock).messages.latest("telegram", 1)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ({"conversation_ids": [1, 2]}, {"conversation_ids": [1, 2]}),
        ({"view_id": 3}, {"view_id": 3}),
        ({"filter": {"status": "open"}}, {"filter": {"organization_id": ORG, "status": "open"}}),
    ],
)
def test_bulk_action_body_and_count(
    clock: FakeClock, target: dict[str, Any], expected: dict[str, Any]
) -> None:
    api = FakeApi({("POST", "/conversations-bulk-actions"): {"processed_count": 2}})
    count = services(api, clock).bulk.bulk_action("assign", owner_id=4, idempotency_key="b1", **target)
    assert count == 2
    assert body_of(api.requests[0]) == {"action": "assign", "owner_id": 4, **expected}
    assert api.requests[0].headers["idempotency-key"] == "b1"


@pytest.mark.parametrize(
    "target",
    [{}, {"conversation_ids": [1], "view_id": 2}, {"conversation_ids": []}, {"conversation_ids": range(51)}],
)
def test_bulk_action_targeting_checked_before_sending(clock: FakeClock, target: dict[str, Any]) -> None:
    api = FakeApi({})
    with pytest.raises(ValueError):
        services(api, clock).bulk.bulk_action("update_status", status="closed", **target)
    assert api.requests == []


def test_bulk_action_without_count_is_malformed(clock: FakeClock) -> None:
    api = FakeApi({("POST", "/conversations-bulk-actions"): {"ok": True}})
    with pytest.raises(MalformedResponse, match="processed_count"):
        services(api, clock).bulk.bulk_action("update_status", status="open", view_id=1)


@pytest.mark.parametrize("channel", sorted(SEND_PATHS))
def test_send_message_picks_channel_endpoint(clock: FakeClock, channel: str) -> None:
    path = SEND_PATHS[channel]
    api = FakeApi({("POST", path): lambda r: {"_id": "m", **body_of(r), "direction": "outbound"}})
    conversation = Conversation.model_validate({**CONV, "channel": channel})
    sent = services(api, clock).sends.send_message(conversation, "hi", "note", idempotency_key="s1")
    assert sent.message_type == "note"
    body = body_of(api.requests[0])
    assert body["conversation_id"] == 5
    assert (body["message_text"], body["message_type"]) == ("hi", "note")
    if channel == "playground":
        assert (body["organization_id"], body["contact_id"]) == (ORG, 9)
    else:
        assert "contact_id" not in body


def test_playground_send_without_contact_is_refused(clock: FakeClock) -> None:
    conversation = Conversation.model_validate({**CONV, "channel": "playground", "contact_id": None})
    with pytest.raises(ValueError, match="contact_id"):
        services(FakeApi({}), clock).sends.send_message(conversation, "hi")


def test_predefined_messages(clock: FakeClock) -> None:
    reply = {"id": 1, "title": "Hi", "message_text": "Hello!", "organization_id": ORG}
    api = FakeApi(
        {
            ("GET", "/conversation-predefined-messages"): page([reply]),
            ("GET", "/conversation-predefined-messages/1"): reply,
            ("POST", "/conversation-predefined-messages"): lambda r: {"id": 2, **body_of(r)},
            ("PATCH", "/conversation-predefined-messages/1"): {**reply, "title": "Hey"},
            ("DELETE", "/conversation-predefined-messages/1"): reply,
        }
    )
    svc = services(api, clock).predefined
    assert svc.get_by_title("Hi") == svc.get(1)
    assert api.requests[0].url.params["title"] == "Hi"
    created = svc.create("Bye", "Goodbye")
    assert (created.id, created.organization_id) == (2, ORG)
    assert svc.patch(1, {"title": "Hey"}).title == "Hey"
    svc.remove(1)
    assert [r.method for r in api.requests] == ["GET", "GET", "POST", "PATCH", "DELETE"]


def test_automation_run_builds_initial_payload_like_the_app(clock: FakeClock) -> None:
    msgs = [{"_id": "m2", "conversation_id": 5, "direction": "inbound"}]
    api = FakeApi(
        {
            ("GET", "/conversations/5"): CONV,
            ("GET", "/contacts/9"): {"id": 9, "name": "Ana"},
            ("GET", "/conversation-messages-whatsapp"): page(msgs),
            ("POST", "/automations-executions"): lambda r: {"_id": "x1", **body_of(r)},
        }
    )
    run = services(api, clock).automations.run(77, 5, idempotency_key="a1")
    assert run.id == "x1"
    get_conv, get_contact, get_msgs, post = api.requests
    assert get_contact.url.path == "/contacts/9"
    assert get_conv.url.params["organization_id"] == str(ORG)
    assert get_msgs.url.params["$limit"] == "50"
    assert get_msgs.url.params["$sort[created_at]"] == "-1"
    assert body_of(post) == {
        "automation_id": 77,
        "organization_id": ORG,
        "conversation_id": 5,
        "initial_payload": {"conversation": CONV, "contact": {"id": 9, "name": "Ana"}, "messages": msgs},
    }


def test_automation_payload_contact_is_null_when_missing(clock: FakeClock) -> None:
    api = FakeApi(
        {
            ("GET", "/conversations/5"): {**CONV, "contact_id": 404},
            ("GET", "/conversation-messages-whatsapp"): page([]),
        }
    )
    payload = services(api, clock).automations.build_initial_payload(5)
    assert payload["contact"] is None
    assert payload["messages"] == []


def test_files_sign_and_create(clock: FakeClock) -> None:
    api = FakeApi(
        {
            ("POST", "/s3-url-signing"): {"url": "http://s3/put", "s3_key": "k", "s3_path": "p"},
            ("POST", "/conversation-files"): lambda r: {"_id": "f1", **body_of(r)},
        }
    )
    svc = services(api, clock).files
    signed = svc.sign_upload("a.png", "image/png")
    assert signed.url == "http://s3/put"
    made = svc.create_file(
        5,
        file_name="a.png",
        file_type="image/png",
        file_size=10,
        s3_key="k",
        s3_path="p",
        file_category="image",
    )
    assert made.id == "f1"
    assert body_of(api.requests[1])["organization_id"] == ORG
