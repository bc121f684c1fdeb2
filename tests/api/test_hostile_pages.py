"""Finding 13.6: one `null` (or otherwise malformed) item in a page's `data` is skipped with
one rate-limited log line; the rest of the page is processed; a page never fails as a whole
for one record. Over real sockets to the hostile API (tests/support/hostile_api.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.support.hostile_api import HostileHandle
from tests.support.hostile_loop import MATCH_OPEN, capture_logs, events, hostile_loop
from worker.api.client import ApiClient
from worker.api.models import Conversation
from worker.api.services import CONVERSATIONS, Services

BAD_ITEMS: dict[str, tuple[Any, ...]] = {
    "null": (None,),
    "number": (7,),
    "string": ("conversation",),
    "list": ([1, 2],),
    "several": (None, None, 3),
}


def new_ids(hostile: HostileHandle, n: int) -> list[int]:
    return [int(hostile.sim.new_conversation(channel="webchat")["id"]) for _ in range(n)]


@pytest.mark.parametrize("bad", sorted(BAD_ITEMS))
def test_a_poll_skips_the_bad_item_and_processes_the_rest_of_the_page(
    bad: str, hostile: HostileHandle, redis_url: str
) -> None:
    ids = new_ids(hostile, 3)
    hostile.api.null_items(CONVERSATIONS, items=BAD_ITEMS[bad])
    logs = capture_logs()
    with hostile_loop(hostile, redis_url, MATCH_OPEN) as (loop, collector):
        loop.poll_once()
        assert collector.conversations() == set(ids)
        assert loop.watermark.state.updated_at is not None  # the poll moved on
        # The same bad item on every tick is logged once, not every 2 s.
        more = new_ids(hostile, 1)
        loop.poll_once()
        assert collector.conversations() == {*ids, *more}
    skipped = events(logs, "page_item_skipped")
    assert len(skipped) == 1, skipped
    assert skipped[0]["path"] == CONVERSATIONS and skipped[0]["skipped"] == len(BAD_ITEMS[bad])


def test_a_full_page_with_a_null_still_pages_on(hostile: HostileHandle, redis_url: str) -> None:
    """A page of 50 items with one `null` is still full: the next page is read in the same tick."""
    ids = new_ids(hostile, 60)
    hostile.api.null_items(CONVERSATIONS, times=1)
    with hostile_loop(hostile, redis_url, MATCH_OPEN, page_size=50) as (loop, collector):
        loop.poll_once()
        assert collector.conversations() == set(ids)
        collector.steps.clear()
        hostile.api.null_items(CONVERSATIONS)
        loop.resync_once()  # every page of the resync carries one: all 60 still seen, no repeat
        assert collector.steps == []  # already claimed, and the resync ended


def test_find_all_skips_null_and_malformed_records(hostile: HostileHandle) -> None:
    """The actors' `id[$in]` reads: one bad record does not fail the read of the others."""
    ids = new_ids(hostile, 3)
    hostile.api.null_items(CONVERSATIONS, items=(None, {"id": "not-a-number", "channel": "webchat"}))
    logs = capture_logs()
    settings = hostile.worker_settings(read_retries=0)
    with ApiClient.from_settings(settings, clock=hostile.clock) as client:
        found = list(Services(client).conversations.find({"id": {"$in": ids}}))
    assert [c.id for c in found] == ids
    assert len(events(logs, "page_item_skipped")) == 1
    assert len(events(logs, "record_malformed")) == 1


def test_the_timer_pump_skips_a_malformed_record_and_evaluates_the_others(
    hostile: HostileHandle, redis_url: str
) -> None:
    ids = new_ids(hostile, 2)
    hostile.api.null_items(CONVERSATIONS, items=(None, {"id": ids[0], "channel": None}))
    with hostile_loop(hostile, redis_url, MATCH_OPEN) as (loop, collector):
        due = hostile.clock.now() - timedelta(seconds=1)
        loop.runtime.timers.schedule_many([("assign-open", i, due) for i in ids])
        report = loop.pump_once()
    assert report.conversations >= 1
    assert ids[1] in collector.conversations()


def test_a_message_page_with_a_null_is_read(hostile: HostileHandle) -> None:
    (conv,) = new_ids(hostile, 1)
    hostile.api.null_items("/conversation-messages-webchat")
    with ApiClient.from_settings(hostile.worker_settings(), clock=hostile.clock) as client:
        messages = Services(client).messages.latest("webchat", conv)
    assert len(messages) == 1 and messages[0].conversation_id == conv
    assert Conversation  # the record type the conversation pages use
