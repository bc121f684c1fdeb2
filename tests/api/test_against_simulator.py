"""The client and every service helper against the real simulator over loopback sockets.

The simulator shares the test's FakeClock: Retry-After and backoff waits move
that clock (the simulator's rate-limit bucket refills with it), nothing sleeps.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from worker.api import errors
from worker.api.client import ApiClient
from worker.api.models import Conversation
from worker.api.services import SEND_PATHS, Services
from worker.clock import FakeClock, SystemClock
from worker.logs import configure_logging
from worker.simulator.server import serve
from worker.simulator.simulator import Simulator
from worker.simulator.testing import SimulatorHandle

Api = tuple[Services, SimulatorHandle]


def make_client(handle: SimulatorHandle, token: str | None = None, **kwargs: Any) -> ApiClient:
    options: dict[str, Any] = {"rate_limit_per_s": 10_000, "rate_burst": 10_000, "read_retries": 3}
    options.update(kwargs)
    return ApiClient(
        handle.url,
        token if token is not None else handle.token,
        handle.sim.organization_id,
        clock=handle.clock,
        rng=random.Random(0),
        **options,
    )


@pytest.fixture
def api(simulator: SimulatorHandle) -> Iterator[Api]:
    simulator.sim.seed(120, seed=3)
    client = make_client(simulator)
    yield Services(client), simulator
    client.close()


def open_conversation(handle: SimulatorHandle, channel: str) -> Conversation:
    """A fresh conversation with an inbound message (so Meta's 24-h window is open)."""
    return Conversation.model_validate(_wire(handle.sim.new_conversation(channel=channel)))


def _wire(record: dict[str, Any]) -> dict[str, Any]:
    from worker.simulator.store import to_wire

    wired: dict[str, Any] = to_wire(record)
    return wired


# --- pagination --------------------------------------------------------------------------


def test_find_all_returns_every_conversation_once(api: Api) -> None:
    services, _ = api
    ids = [c.id for c in services.conversations.find()]
    assert sorted(ids) == list(range(1, 121))
    assert len(ids) == len(set(ids))


def test_server_clamps_limit_and_client_reads_it_back(api: Api) -> None:
    services, _ = api
    page = services.client.find_page("/conversations", {"$limit": 100})
    assert (page.limit, len(page.data), page.total) == (50, 50, 120)


def test_pagination_with_inserts_between_pages(api: Api) -> None:
    services, handle = api
    seen: list[int] = []
    added: list[int] = []
    for conversation in services.conversations.find():
        seen.append(conversation.id)
        if len(seen) in (50, 100):  # the next page is not fetched yet
            added.append(handle.sim.new_conversation(channel="sms")["id"])
    assert len(seen) == len(set(seen))
    assert set(range(1, 121)) | set(added) == set(seen)


def test_changed_since_with_changes_between_pages(api: Api) -> None:
    services, handle = api
    since = handle.clock.now() - timedelta(days=365)
    changed: dict[int, Conversation] = {}
    later_id = None
    for conversation in services.conversations.changed_since(since):
        assert conversation.id not in changed
        changed[conversation.id] = conversation
        if len(changed) == 50:
            handle.clock.advance(1)
            unseen = [cid for cid in range(1, 121) if cid not in changed]
            later_id = unseen[0]
            handle.sim.human_change(later_id, {"tags": ["moved"]})
            handle.sim.new_conversation(channel="webchat")
    assert set(range(1, 122)) <= set(changed)
    assert later_id is not None and changed[later_id].tags == ["moved"]
    updated = [c.updated_at for c in changed.values()]
    assert all(u is not None and u >= since for u in updated)


def test_changed_since_filters_on_updated_at(api: Api) -> None:
    services, handle = api
    handle.clock.advance(60)
    cutoff = handle.clock.now()
    handle.sim.human_change(7, {"status": "closed"})
    handle.sim.customer_message(9)
    assert sorted(c.id for c in services.conversations.changed_since(cutoff)) == [7, 9]


# --- one helper per service -----------------------------------------------------------------


def test_conversation_get_patch_remove(api: Api) -> None:
    services, handle = api
    conversations = services.conversations
    assert conversations.get(5).id == 5
    patched = conversations.patch(5, {"status": "closed", "tags": ["vip"]}, idempotency_key="p-5")
    assert (patched.status, patched.tags) == ("closed", ["vip"])
    assert handle.sim.conversation(5)["status"] == "closed"
    conversations.remove(5)
    with pytest.raises(errors.NotFound):
        conversations.get(5)


def test_contact_get(api: Api) -> None:
    services, _ = api
    conversation = services.conversations.get(8)
    assert conversation.contact_id is not None
    contact = services.contacts.get(conversation.contact_id)
    assert contact.id == conversation.contact_id
    assert contact.name


def test_messages_latest_and_all(api: Api) -> None:
    services, handle = api
    conversation = services.conversations.get(12)
    for text in ("one", "two", "three"):
        handle.clock.advance(1)
        handle.sim.customer_message(12, text)
    expected = [m["_id"] for m in handle.sim.messages(12)]
    oldest_first = [m.id for m in services.messages.all_for(conversation.channel, 12)]
    assert oldest_first == expected
    latest = services.messages.latest(conversation.channel, 12, limit=2)
    assert [m.message_text for m in latest] == ["three", "two"]
    services.messages.remove(conversation.channel, latest[0].id)
    with pytest.raises(errors.NotFound):
        services.messages.get(conversation.channel, latest[0].id)


def test_bulk_action_each_targeting_mode(api: Api) -> None:
    services, handle = api
    bulk = services.bulk
    assert bulk.bulk_action("assign", conversation_ids=[1, 2, 3], owner_id=105, idempotency_key="b-1") == 3
    assert {handle.sim.conversation(i)["owner_id"] for i in (1, 2, 3)} == {105}
    handle.sim.add_view(900, {"channel": "sms"})
    sms = [c.id for c in services.conversations.find({"channel": "sms"})]
    assert bulk.bulk_action("update_status", view_id=900, status="closed") == len(sms)
    assert all(handle.sim.conversation(i)["status"] == "closed" for i in sms)
    count = bulk.bulk_action("unassign", filter={"pipeline_id": 2, "status": "open"})
    assert count == len(list(services.conversations.find({"pipeline_id": 2, "status": "open"})))
    assert bulk.bulk_action("move", conversation_ids=[4], pipeline_id=2, pipeline_stage_id=22) == 1
    assert handle.sim.conversation(4)["pipeline_stage_id"] == 22


@pytest.mark.parametrize("channel", sorted(SEND_PATHS))
def test_send_message_on_every_channel(api: Api, channel: str) -> None:
    services, handle = api
    conversation = open_conversation(handle, channel)
    sent = services.sends.send_message(conversation, f"hello {channel}", idempotency_key=f"s-{channel}")
    assert (sent.direction, sent.message_text) == ("outbound", f"hello {channel}")
    stored = handle.sim.messages(conversation.id)[-1]
    assert stored["_id"] == sent.id
    (entry,) = handle.sim.audit.applied("POST", SEND_PATHS[channel])
    assert entry.idempotency_key == f"s-{channel}"


def test_meta_window_notes_and_templates(api: Api) -> None:
    services, handle = api
    conversation = open_conversation(handle, "whatsapp")
    handle.clock.advance(timedelta(hours=25))
    with pytest.raises(errors.Unprocessable, match="24-hour") as info:
        services.sends.send_message(conversation, "late reply")
    assert info.value.maybe_applied is False
    note = services.sends.send_message(conversation, "internal", "note")
    assert note.message_type == "note"
    template = services.sends.send_message(conversation, "", "template", template_name="follow_up")
    assert template.message_type == "template"


def test_predefined_messages(api: Api) -> None:
    services, _ = api
    predefined = services.predefined
    existing = list(predefined.find())
    assert existing
    assert predefined.get_by_title(existing[0].title) == predefined.get(existing[0].id)
    created = predefined.create("Holiday", "We are closed today.", idempotency_key="pm-1")
    assert predefined.get_by_title("Holiday") == created
    assert predefined.patch(created.id, {"message_text": "Back tomorrow."}).message_text == "Back tomorrow."
    predefined.remove(created.id)
    assert predefined.get_by_title("Holiday") is None


def test_automation_run_sends_the_apps_initial_payload(api: Api) -> None:
    services, handle = api
    handle.clock.advance(1)
    handle.sim.customer_message(15, "newest")
    run = services.automations.run(31, 15, idempotency_key="a-15")
    assert run.id is not None and run.conversation_id == 15
    (entry,) = handle.sim.audit.applied("POST", "/automations-executions")
    payload = entry.body["initial_payload"]
    assert payload["conversation"]["id"] == 15
    assert payload["contact"]["id"] == handle.sim.conversation(15)["contact_id"]
    newest_first = [m["_id"] for m in reversed(handle.sim.messages(15))][:50]
    assert [m["_id"] for m in payload["messages"]] == newest_first
    assert payload["messages"][0]["message_text"] == "newest"


def test_upload_sign_put_and_file_record(api: Api) -> None:
    services, _ = api
    signed = services.files.sign_upload("photo 1.png", "image/png")
    put = httpx.put(signed.url, content=b"\x89PNG....")
    assert put.status_code == 200
    assert signed.s3_key and signed.s3_path
    record = services.files.create_file(
        3,
        file_name="photo 1.png",
        file_type="image/png",
        file_size=8,
        s3_key=signed.s3_key,
        s3_path=signed.s3_path,
        file_category="image",
    )
    assert record.id and record.conversation_id == 3


def test_idempotency_key_is_replayed_by_the_simulator(api: Api) -> None:
    services, handle = api
    conversation = open_conversation(handle, "sms")
    first = services.sends.send_message(conversation, "once", idempotency_key="same")
    second = services.sends.send_message(conversation, "once", idempotency_key="same")
    assert first.id == second.id
    outcomes = [e.outcome for e in handle.sim.audit.entries() if e.idempotency_key == "same"]
    assert outcomes == ["applied", "replay"]


# --- each error class from real answers -----------------------------------------------------


def test_401_with_a_wrong_token(simulator: SimulatorHandle) -> None:
    with (
        make_client(simulator, token="not-the-token") as client,
        pytest.raises(errors.NotAuthenticated) as info,
    ):
        client.get("/conversations", 1)
    assert info.value.status == 401 and not info.value.retryable


def test_400_bad_request_with_feathers_data(api: Api) -> None:
    services, _ = api
    with pytest.raises(errors.BadRequest, match="Exactly one") as info:
        services.client.create("/conversations-bulk-actions", {"action": "unassign"})
    assert info.value.data == {"targeting": []}


def test_403_for_another_organization(api: Api) -> None:
    services, _ = api
    with pytest.raises(errors.Forbidden):
        services.client.get("/conversations", 1, {"organization_id": 999})


def test_404_not_found(api: Api) -> None:
    services, _ = api
    with pytest.raises(errors.NotFound, match="99999"):
        services.conversations.get(99999)


def test_405_is_a_plain_api_error(api: Api) -> None:
    services, _ = api
    with pytest.raises(errors.ApiError) as info:
        services.client.patch("/contacts", 1, {"name": "x"})
    assert info.value.status == 405 and type(info.value) is errors.ApiError


def test_409_conflict() -> None:
    # The only 409 the simulator answers: moving the clock of a simulator on the system clock.
    sim = Simulator(clock=SystemClock(), token="conflict-token")
    with (
        serve(sim.app) as server,
        ApiClient(server.url, "conflict-token", 1) as client,
        pytest.raises(errors.Conflict),
    ):
        client.request("POST", "/__admin/clock", json_body={"advance_s": 1})


def test_422_unprocessable(api: Api) -> None:
    services, handle = api
    conversation = open_conversation(handle, "instagram")
    handle.clock.advance(timedelta(days=2))
    with pytest.raises(errors.Unprocessable) as info:
        services.sends.send_message(conversation, "too late")
    assert info.value.data == {"reason": "window_closed", "conversation_id": conversation.id}


def test_429_retry_after_is_honoured_on_reads(api: Api) -> None:
    services, handle = api
    handle.sim.set_faults(rate_limit_per_s=0.5, rate_burst=1)
    start = handle.clock.now()
    assert services.conversations.get(1).id == 1
    assert services.conversations.get(2).id == 2  # 429 Retry-After: 2, waited on the shared clock
    assert handle.clock.now() - start == timedelta(seconds=2)
    assert handle.sim.fault_counts()["rate_limited"] == 1


def test_429_on_a_write_is_raised_with_retry_after(api: Api) -> None:
    services, handle = api
    handle.sim.set_faults(rate_limit_per_s=0.25, rate_burst=1)
    services.conversations.get(1)
    with pytest.raises(errors.RateLimited) as info:
        services.conversations.patch(1, {"status": "closed"})
    assert info.value.retry_after_s == 4 and not info.value.maybe_applied
    assert handle.sim.audit.applied("PATCH") == []


def test_500_reads_retried_then_raised(api: Api) -> None:
    services, handle = api
    handle.sim.set_faults(error_rate=1.0)
    start = handle.clock.now()
    with pytest.raises(errors.GeneralError) as info:
        services.conversations.get(1)
    assert info.value.retryable
    assert handle.sim.fault_counts()["error"] == 4  # 1 try + read_retries=3
    assert handle.clock.now() > start  # backoff waited on the fake clock


def test_500_read_recovers_when_the_fault_clears(api: Api) -> None:
    services, handle = api
    handle.sim.set_faults(error_rate=0.5, seed=11)
    found = [services.conversations.get(i).id for i in range(1, 11)]
    assert found == list(range(1, 11))
    assert handle.sim.fault_counts().get("error", 0) > 0


def test_503_after_commit_on_a_write_is_not_retried(api: Api) -> None:
    services, handle = api
    handle.sim.set_faults(commit_then_fail_rate=1.0, commit_then_fail_mode="503")
    with pytest.raises(errors.Unavailable) as info:
        services.conversations.patch(6, {"status": "closed"}, idempotency_key="c-6")
    assert info.value.maybe_applied and info.value.retryable
    (entry,) = handle.sim.audit.entries()
    assert (entry.outcome, entry.fault) == ("applied", "commit_then_fail_503")
    assert handle.sim.conversation(6)["status"] == "closed"


def test_dropped_connection_after_commit_is_an_unknown_outcome(api: Api) -> None:
    services, handle = api
    handle.sim.set_faults(commit_then_fail_rate=1.0, commit_then_fail_mode="drop")
    with pytest.raises(errors.TransportError) as info:
        services.bulk.bulk_action("assign", conversation_ids=[9], owner_id=102)
    assert info.value.maybe_applied
    assert len(handle.sim.audit.entries()) == 1  # not retried
    assert handle.sim.conversation(9)["owner_id"] == 102


def test_connection_refused_is_a_transport_error(clock: FakeClock) -> None:
    with serve(Simulator(clock=clock, token="t-refused").app) as server:
        url = server.url
    client = ApiClient(url, "t-refused", 1, clock=clock, connect_retries=0, rng=random.Random(0))
    with pytest.raises(errors.TransportError) as info:
        client.create("/conversation-messages-sms", {"conversation_id": 1})
    assert info.value.maybe_applied is False


# --- redaction over the wire ---------------------------------------------------------------


def test_token_never_logged_nor_in_errors(simulator: SimulatorHandle) -> None:
    stream = io.StringIO()
    configure_logging(level="DEBUG", fmt="json", stream=stream)
    try:
        simulator.sim.seed(5)
        client = make_client(simulator, read_retries=1)
        client.get("/conversations", 1)
        simulator.sim.set_faults(error_rate=1.0)
        with pytest.raises(errors.GeneralError) as info:
            client.get("/conversations", 1)
    finally:
        configure_logging(level="WARNING", fmt="json", stream=io.StringIO())
    text = stream.getvalue()
    assert "api_request" in text and "api_retry_scheduled" in text
    assert simulator.token not in text
    assert simulator.token not in str(info.value) and simulator.token not in repr(info.value)
