"""Sends: the 24-hour window per channel, notes vs replies, templates."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from worker.simulator.testing import SimulatorHandle

from .helpers import assert_feathers_error

META = ("whatsapp", "instagram", "messenger")


def send_path(channel: str) -> str:
    if channel in ("sms", "playground"):
        return f"/conversation-messages-{channel}"
    return f"/conversation-messages-transform-outgoing-{channel}"


def send(
    client: httpx.Client, handle: SimulatorHandle, conversation_id: int, **fields: object
) -> httpx.Response:
    conversation = handle.sim.conversation(conversation_id)
    body = {"conversation_id": conversation_id, "message_text": "hello", **fields}
    if conversation["channel"] == "playground":
        body |= {"organization_id": 1, "contact_id": conversation["contact_id"]}
    return client.post(send_path(conversation["channel"]), json=body)


@pytest.mark.parametrize("channel", META)
def test_meta_channels_refuse_replies_after_24h(
    simulator: SimulatorHandle, client: httpx.Client, channel: str
) -> None:
    conversation = simulator.sim.new_conversation(channel=channel)
    simulator.clock.advance(timedelta(hours=24))
    assert send(client, simulator, conversation["id"]).status_code == 201  # exactly 24 h: still open
    simulator.clock.advance(timedelta(milliseconds=1))
    body = assert_feathers_error(send(client, simulator, conversation["id"]), 422, "Unprocessable")
    assert "24-hour" in str(body["message"]) and "window" in str(body["message"])
    assert send(client, simulator, conversation["id"], message_type="note").status_code == 201
    simulator.sim.customer_message(conversation["id"], "back again")
    assert send(client, simulator, conversation["id"]).status_code == 201


@pytest.mark.parametrize("channel", ("webchat", "sms", "playground"))
def test_other_channels_have_no_window(
    simulator: SimulatorHandle, client: httpx.Client, channel: str
) -> None:
    conversation = simulator.sim.new_conversation(channel=channel)
    simulator.clock.advance(timedelta(days=10))
    assert send(client, simulator, conversation["id"]).status_code == 201


def test_no_inbound_ever_means_window_closed(simulator: SimulatorHandle, client: httpx.Client) -> None:
    conversation = simulator.sim.new_conversation(channel="messenger")
    with simulator.sim.lock:  # a team-initiated conversation: no customer message yet
        simulator.sim.store.conversations.records[conversation["id"]]["last_inbound_at"] = None
    assert_feathers_error(send(client, simulator, conversation["id"]), 422, "Unprocessable")


def test_whatsapp_template_outside_window(simulator: SimulatorHandle, client: httpx.Client) -> None:
    conversation = simulator.sim.new_conversation(channel="whatsapp")
    simulator.clock.advance(timedelta(days=2))
    no_name = send(client, simulator, conversation["id"], message_type="template")
    assert_feathers_error(no_name, 400, "BadRequest")
    sent = send(client, simulator, conversation["id"], message_type="template", template_name="follow_up_1")
    assert sent.status_code == 201 and sent.json()["template_name"] == "follow_up_1"
    assert simulator.sim.conversation(conversation["id"])["last_outbound_at"] == simulator.clock.now()


def test_templates_only_on_whatsapp(simulator: SimulatorHandle, client: httpx.Client) -> None:
    conversation = simulator.sim.new_conversation(channel="instagram")
    response = send(client, simulator, conversation["id"], message_type="template", template_name="x")
    assert_feathers_error(response, 400, "BadRequest")


def test_empty_text_without_media_is_rejected(simulator: SimulatorHandle, client: httpx.Client) -> None:
    conversation = simulator.sim.new_conversation(channel="webchat")
    assert_feathers_error(send(client, simulator, conversation["id"], message_text=""), 400, "BadRequest")
    with_media = send(
        client, simulator, conversation["id"], message_text=None, s3_path="s3://b/k", file_size=3
    )
    assert with_media.status_code == 201 and with_media.json()["s3_path"] == "s3://b/k"


def test_note_bumps_only_updated_at(simulator: SimulatorHandle, client: httpx.Client) -> None:
    conversation = simulator.sim.new_conversation(channel="whatsapp")
    simulator.clock.advance(120)
    note = send(client, simulator, conversation["id"], message_type="note", message_text="internal")
    assert note.status_code == 201 and note.json()["message_type"] == "note"
    after = simulator.sim.conversation(conversation["id"])
    assert after["updated_at"] == simulator.clock.now()
    assert after["last_outbound_at"] is None
    assert after["last_message_at"] == conversation["last_message_at"]


def test_reply_bumps_outbound_and_last_message(simulator: SimulatorHandle, client: httpx.Client) -> None:
    conversation = simulator.sim.new_conversation(channel="whatsapp")
    simulator.clock.advance(120)
    assert send(client, simulator, conversation["id"]).status_code == 201
    after = simulator.sim.conversation(conversation["id"])
    now = simulator.clock.now()
    assert after["updated_at"] == after["last_outbound_at"] == after["last_message_at"] == now
    assert after["unread_count"] == 1  # an API send does not mark the conversation read
    assert after["last_inbound_at"] == conversation["last_inbound_at"]
