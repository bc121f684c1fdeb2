"""Finding 13.7: the client never follows a redirect; any 3xx is an error naming the status
and `Location`, for reads and writes, and a 3xx carrying a page-shaped body is never data.

Everything goes over real sockets to the hostile API (tests/support/hostile_api.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e._exec_helpers import plan_and_claim, runtime_on
from tests.support.hostile_api import HostileHandle
from tests.support.hostile_loop import MATCH_OPEN, hostile_loop
from worker.api.client import ApiClient
from worker.api.errors import MalformedResponse, Redirected
from worker.api.services import BULK_ACTIONS, CONVERSATIONS
from worker.execution.execute import execute

LOCATION = "https://login.example.invalid/sso?next=/conversations"


@pytest.fixture
def client(hostile: HostileHandle) -> Iterator[ApiClient]:
    with ApiClient.from_settings(hostile.worker_settings(read_retries=2), clock=hostile.clock) as api:
        yield api


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("page_body", [False, True])
def test_a_redirected_read_is_an_error_naming_status_and_location(
    status: int, page_body: bool, hostile: HostileHandle, client: ApiClient
) -> None:
    hostile.sim.new_conversation(channel="webchat")
    hostile.api.redirect(CONVERSATIONS, status=status, location=LOCATION, page_body=page_body)
    with pytest.raises(Redirected) as caught:
        client.find_page(CONVERSATIONS, {"organization_id": 1})
    assert caught.value.status == status and caught.value.location == LOCATION
    assert f"{status}" in str(caught.value) and LOCATION in str(caught.value)
    # Not followed, not retried: exactly one request reached the server.
    assert hostile.api.count("GET", CONVERSATIONS) == 1


def test_a_redirected_write_is_an_error_naming_status_and_location(
    hostile: HostileHandle, client: ApiClient
) -> None:
    conv = hostile.sim.new_conversation(channel="webchat")
    hostile.api.redirect(BULK_ACTIONS, method="POST", location=LOCATION)
    body = {"action": "assign", "owner_id": 201, "conversation_ids": [conv["id"]]}
    with pytest.raises(Redirected, match=r"302.*login\.example\.invalid"):
        client.create(BULK_ACTIONS, body)


def test_a_poll_answered_by_a_redirect_with_a_page_body_plans_nothing(
    hostile: HostileHandle, redis_url: str
) -> None:
    """The page-shaped body of a 302 once became a bulk assign."""
    hostile.api.redirect(CONVERSATIONS, method="GET", page_body=True)
    with hostile_loop(hostile, redis_url, MATCH_OPEN) as (loop, collector):
        with pytest.raises(Redirected):
            loop.poll_once()
        assert collector.steps == []
        assert loop.watermark.load().updated_at is None


def test_a_redirected_write_fails_the_firing_with_the_redirect_as_reason(
    hostile: HostileHandle, redis_url: str
) -> None:
    conv = hostile.sim.new_conversation(channel="webchat")
    with runtime_on(hostile, redis_url, MATCH_OPEN) as runtime:
        (step,) = plan_and_claim(runtime, [int(conv["id"])])
        hostile.api.redirect(BULK_ACTIONS, method="POST", location=LOCATION)
        execute(runtime, step)
        (item,) = step.items
        record = runtime.ledger.get(item.key)
    assert record is not None and record.state == "failed"
    assert "302" in record.reason and LOCATION in record.reason
    assert hostile.sim.conversation(int(conv["id"]))["owner_id"] is None


def test_a_login_page_instead_of_a_page_fails_the_tick_clearly(
    hostile: HostileHandle, redis_url: str
) -> None:
    """An HTML 200 (a proxy's sign-in page) is never data either."""
    hostile.sim.new_conversation(channel="webchat")
    hostile.api.html(CONVERSATIONS, method="GET", times=1)
    with hostile_loop(hostile, redis_url, MATCH_OPEN) as (loop, collector):
        with pytest.raises(MalformedResponse, match=r"not JSON \(text/html"):
            loop.poll_once()
        assert collector.steps == [] and loop.watermark.load().updated_at is None
        loop.poll_once()  # the next tick, answered properly, goes on
        assert len(collector.steps) == 1
