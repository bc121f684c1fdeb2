"""Slow and lying answers from the hostile API, over real sockets.

An answer that trickles (a byte at a time, each read returning in time) never trips a
read timeout: the client gives each whole answer a deadline. A `total` that lies is
never trusted to end or to extend paging.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.hostile_api import HostileHandle
from tests.support.hostile_loop import MATCH_OPEN, capture_logs, events, hostile_loop
from worker.api.client import ApiClient
from worker.api.errors import TransportError
from worker.api.services import BULK_ACTIONS, CONVERSATIONS, Services


@pytest.fixture
def client(hostile: HostileHandle) -> Iterator[ApiClient]:
    settings = hostile.worker_settings(read_retries=0, http_timeout_s=0.5, http_connect_timeout_s=0.5)
    with ApiClient.from_settings(settings, clock=hostile.clock) as api:
        yield api


def test_a_trickling_read_ends_at_the_answer_deadline(hostile: HostileHandle, client: ApiClient) -> None:
    hostile.sim.new_conversation(channel="webchat")
    hostile.api.slow(CONVERSATIONS, 20.0, method="GET")
    started = time.monotonic()
    with pytest.raises(TransportError, match="deadline") as caught:
        client.find_page(CONVERSATIONS, {"organization_id": 1})
    assert time.monotonic() - started < 5.0  # not the 20 s the server would take
    assert caught.value.retryable and not caught.value.maybe_applied


def test_a_trickling_write_is_an_unknown_outcome(hostile: HostileHandle, client: ApiClient) -> None:
    conv = hostile.sim.new_conversation(channel="webchat")
    hostile.api.slow(BULK_ACTIONS, 20.0, method="POST")
    body = {"action": "assign", "owner_id": 201, "conversation_ids": [conv["id"]]}
    with pytest.raises(TransportError, match="deadline") as caught:
        client.create(BULK_ACTIONS, body)
    assert caught.value.maybe_applied  # the server had applied it: read back, never resend blind


def test_an_answer_within_the_deadline_is_read(hostile: HostileHandle, client: ApiClient) -> None:
    conv = hostile.sim.new_conversation(channel="webchat")
    hostile.api.slow(CONVERSATIONS, 0.1, method="GET")
    assert [c.id for c in Services(client).conversations.find()] == [conv["id"]]


@pytest.mark.parametrize("total", [0, 1, 10**9])
def test_a_lying_total_neither_ends_nor_extends_paging(
    total: int, hostile: HostileHandle, redis_url: str
) -> None:
    ids = [int(hostile.sim.new_conversation(channel="webchat")["id"]) for _ in range(60)]
    hostile.api.lying_total(CONVERSATIONS, total)
    with hostile_loop(hostile, redis_url, MATCH_OPEN) as (loop, collector):
        loop.poll_once()
        assert collector.conversations() == set(ids)
        pages = hostile.api.count("GET", CONVERSATIONS)
        found = list(Services(loop.runtime.api.client).conversations.find({"id": {"$in": ids}}))
    assert pages <= 3
    assert {c.id for c in found} == set(ids)


def test_find_all_ends_on_a_server_that_never_runs_out(hostile: HostileHandle, client: ApiClient) -> None:
    hostile.api.endless()
    logs = capture_logs()
    found = list(client.find_all(CONVERSATIONS, {"status": "open"}, max_pages=5))
    assert len(found) == 5 * 50 and hostile.api.count("GET", CONVERSATIONS) == 5
    (line,) = events(logs, "find_all_bounded")
    assert line["pages"] == 5
