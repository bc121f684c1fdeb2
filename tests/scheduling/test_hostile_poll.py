"""Findings 13.5 and 13.8 against the hostile API, over real sockets.

5. The watermark never moves past the API's present: a record stamped in 2099 is
   logged once and kept in view, and the conversations created after it are still seen.
8. Pages per tick and tick duration are bounded; the tick ends at a page boundary.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.support.hostile_api import HostileHandle
from tests.support.hostile_loop import MATCH_OPEN, capture_logs, events, hostile_loop
from worker.clock import FakeClock
from worker.scheduling.tick import TickReport
from worker.state.watermark import CLOCK_SKEW

FAR_FUTURE = datetime(2099, 1, 1, tzinfo=UTC)


def new_id(hostile: HostileHandle) -> int:
    return int(hostile.sim.new_conversation(channel="webchat")["id"])


def evaluated(report: TickReport) -> set[int]:
    return {e.conversation_id for e in report.evaluations}


def test_a_record_from_2099_does_not_blind_the_poll(hostile: HostileHandle, redis_url: str) -> None:
    first, future = new_id(hostile), new_id(hostile)
    hostile.api.stamp(future, FAR_FUTURE)
    logs = capture_logs()
    with hostile_loop(hostile, redis_url, MATCH_OPEN) as (loop, collector):
        assert evaluated(loop.poll_once()) == {first, future}
        mark = loop.watermark.state.updated_at
        assert mark is not None and mark <= hostile.clock.now() + CLOCK_SKEW

        hostile.clock.advance(timedelta(minutes=1))
        later = new_id(hostile)
        second = loop.poll_once()
        assert later in evaluated(second) and later in collector.conversations()
        assert future in evaluated(second)  # kept in view: still evaluated on later polls

        hostile.clock.advance(timedelta(minutes=1))
        closed = new_id(hostile)
        hostile.sim.human_change(closed, {"status": "closed"})
        assert {closed, future} <= evaluated(loop.poll_once())
    # Logged once, not on every poll that still sees it.
    (line,) = events(logs, "record_from_the_future")
    assert line["conversation_id"] == future and line["updated_at"].startswith("2099-")


def test_a_record_within_the_skew_moves_the_watermark(hostile: HostileHandle, redis_url: str) -> None:
    """A server clock a little ahead of ours is not 'the future'."""
    conv = new_id(hostile)
    ahead = hostile.clock.now() + CLOCK_SKEW / 2
    hostile.api.stamp(conv, ahead)
    with hostile_loop(hostile, redis_url, MATCH_OPEN) as (loop, _):
        loop.poll_once()
        assert loop.watermark.state.updated_at == ahead


def test_the_servers_date_caps_the_watermark(hostile: HostileHandle, redis_url: str) -> None:
    """Our clock runs two hours ahead of the API's: a record an hour past the API's `Date`
    is from the future even though it is in our past, and stays in view."""
    sane, ahead = new_id(hostile), new_id(hostile)
    server_now = hostile.clock.now()
    hostile.api.stamp(ahead, server_now + timedelta(hours=1))
    ours = FakeClock(server_now + timedelta(hours=2))
    with hostile_loop(hostile, redis_url, MATCH_OPEN, clock=ours) as (loop, _):
        loop.poll_once()
        mark = loop.watermark.state.updated_at
        assert mark is not None and mark <= server_now + CLOCK_SKEW
        assert ahead in evaluated(loop.poll_once())
    assert sane


# --- 8. a server whose pages never end ------------------------------------------------------


def test_endless_new_ids_end_the_tick_at_the_page_bound(hostile: HostileHandle, redis_url: str) -> None:
    hostile.api.endless()
    logs = capture_logs()
    bounds = {"poll_max_pages": 4, "resync_max_pages": 4}
    with hostile_loop(hostile, redis_url, MATCH_OPEN, **bounds) as (loop, collector):
        report = loop.poll_once()
        assert hostile.api.count("GET", "/conversations") == 4
        # Ends at a page boundary: every page read was processed, and the watermark kept it.
        assert report.conversations == 4 * 50 and len(collector.conversations()) == 200
        assert loop.watermark.state.updated_at is not None
        loop.resync_once()
        assert hostile.api.count("GET", "/conversations") == 8
    bounded = events(logs, "tick_bounded")
    assert [(b["kind"], b["reason"], b["pages"]) for b in bounded] == [
        ("incremental", "max_pages", 4),
        ("resync", "max_pages", 4),
    ]


def test_slow_endless_pages_end_the_tick_at_the_time_bound(hostile: HostileHandle, redis_url: str) -> None:
    hostile.api.endless(delay_s=0.3)
    logs = capture_logs()
    with hostile_loop(hostile, redis_url, MATCH_OPEN, poll_max_tick_s=1) as (loop, _):
        loop.poll_once()
    (bounded,) = events(logs, "tick_bounded")
    assert bounded["reason"] == "max_duration" and 2 <= bounded["pages"] <= 6
    assert hostile.api.count("GET", "/conversations") == bounded["pages"]


def test_a_stop_request_ends_a_paging_tick_at_the_next_page(hostile: HostileHandle, redis_url: str) -> None:
    hostile.api.endless()
    with hostile_loop(hostile, redis_url, MATCH_OPEN) as (loop, _):
        real = loop.process

        def process_then_stop(*args: object, **kwargs: object) -> TickReport:
            loop.stop.set()  # SIGTERM arrives while the first page is processed
            return real(*args, **kwargs)  # type: ignore[arg-type]

        loop.process = process_then_stop  # type: ignore[method-assign]
        loop.poll_once()
    assert hostile.api.count("GET", "/conversations") == 1


def test_a_resync_cut_short_resumes_where_it_stopped(hostile: HostileHandle, redis_url: str) -> None:
    ids = [new_id(hostile) for _ in range(12)]
    with hostile_loop(hostile, redis_url, MATCH_OPEN, page_size=5, resync_max_pages=2) as (loop, _):
        first = loop.resync_once()
        second = loop.resync_once()
    assert evaluated(first) == set(ids[:10]) and evaluated(second) == set(ids[10:])


def test_a_resync_is_not_cut_by_the_polls_page_budget(hostile: HostileHandle, redis_url: str) -> None:
    """A pass over every open conversation fits one run: 80,000 took 8 intervals under the poll's."""
    ids = [new_id(hostile) for _ in range(12)]
    with hostile_loop(hostile, redis_url, MATCH_OPEN, page_size=5, poll_max_pages=1) as (loop, _):
        assert evaluated(loop.resync_once()) == set(ids)


def test_closes_during_a_resync_hide_no_open_conversation(hostile: HostileHandle, redis_url: str) -> None:
    """Under $skip paging each close moved the later conversations a place back: one missed per close."""
    ids = [new_id(hostile) for _ in range(12)]
    with hostile_loop(hostile, redis_url, MATCH_OPEN, page_size=5) as (loop, _):
        real = loop.poller._page

        def page_then_close(*args: object, **kwargs: object) -> object:
            read = real(*args, **kwargs)  # type: ignore[arg-type]
            if hostile.sim.conversation(ids[0])["status"] == "open":
                for conversation in ids[:2]:  # a person closes two after the first page was read
                    hostile.sim.human_change(conversation, {"status": "closed"})
            return read

        loop.poller._page = page_then_close  # type: ignore[method-assign]
        report = loop.resync_once()
    assert evaluated(report) == set(ids)
