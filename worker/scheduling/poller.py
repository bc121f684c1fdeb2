"""The poller: which conversations changed since the last tick, and all open ones for a resync.

Pages are at most 50 (`$limit`), sorted on `(updated_at, id)`. The incremental
poll asks for `updated_at >= watermark` and, for further pages, moves its lower
bound up to the last `updated_at` it received (skipping only the records it has
already read at exactly that timestamp), so a record updated while we page is
seen on a later page or the next tick rather than skipped. With nothing changed
a tick costs one request. A record seen earlier in the tick that comes back
with another `updated_at` (it changed while we paged) is processed again.

A record that does not parse, or an item of `data` that is not an object at all
(`null`), is skipped with one rate-limited log line (`record_malformed`,
`page_item_skipped`, see `ApiClient`): one poisoned conversation never stops the
poll (the full resync retries it later).

Every tick pages within a `Budget` (`poll_max_pages`, `poll_max_tick_s`, and a
stop request on SIGTERM), checked between pages: a server whose pages never end
(new ids on every page, a `total` that lies) holds a tick for at most that long,
and the tick ends at a page boundary with one `tick_bounded` line. The pages
read so far are processed and the watermark keeps what they covered; a resync
cut short resumes where it stopped on its next run.

Each page carries the watermark's limit for its records: the API's present (its
`Date`, never later than our clock) plus a skew allowance. A record stamped after
it (e.g. in 2099) is processed, logged once an hour (`record_from_the_future`)
and kept in view: the watermark does not follow it, so every poll reads it again
and conversations created after it are still found.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from worker.api.client import ApiClient
from worker.api.models import Conversation, Page
from worker.api.services import CONVERSATIONS
from worker.clock import Clock, SystemClock
from worker.logs import Throttle, get_logger
from worker.metrics import PAGES_FETCHED
from worker.state.watermark import WatermarkState, filter_new_records, horizon, is_from_the_future

log = get_logger(__name__)
# A record from the future is read again on every poll: say so once an hour, not every 2 s.
FUTURE_LOG_INTERVAL_S = 3600.0


@dataclass
class Budget:
    """How long one tick may page: at most `max_pages` pages and `max_s` seconds, and not
    past a stop request (SIGTERM). Checked between pages, so a tick ends at a page boundary."""

    max_pages: int
    max_s: float
    stop: threading.Event = field(default_factory=threading.Event)
    elapsed: Callable[[], float] = field(default_factory=lambda: _stopwatch())
    pages: int = 0

    def spent(self) -> str | None:
        """Why the tick must end before its next page (None: go on)."""
        if self.stop.is_set():
            return "stopping"
        if self.pages >= self.max_pages:
            return "max_pages"
        if self.elapsed() >= self.max_s:
            return "max_duration"
        return None


def _stopwatch() -> Callable[[], float]:
    started = time.monotonic()
    return lambda: time.monotonic() - started


@dataclass
class PollPage:
    """New conversations of one page, and the latest `updated_at` the watermark may take."""

    conversations: list[Conversation]
    limit: datetime


@dataclass
class _Read:
    """One page as read: parsed records, how many items came, whether more may follow."""

    records: list[Conversation]
    received: int
    full: bool
    served_at: datetime | None


class Poller:
    def __init__(self, client: ApiClient, page_size: int, clock: Clock | None = None) -> None:
        self._client = client
        self._page_size = page_size
        self._clock: Clock = clock or SystemClock()
        self._future = Throttle(FUTURE_LOG_INTERVAL_S)
        self._resync_after: int | None = None  # where a resync cut short by its budget resumes

    def changed(self, state: WatermarkState, budget: Budget) -> Iterator[PollPage]:
        """Conversations changed at or after the watermark that it has not seen yet, a page at a time."""
        # Start at the watermark itself: records seen there may have changed since (and
        # moved later in the order), so we filter them by id instead of skipping by count.
        since, skip_at_since = state.updated_at, 0
        # A record seen earlier in this tick comes back when it changed since (a customer
        # wrote, or our own write landed): it is new again. Dropping it would let the
        # watermark pass its change with the records after it.
        seen: dict[int, datetime | None] = {}
        while not _ends(budget, "incremental"):
            query: dict[str, Any] = {"$sort": {"updated_at": 1, "id": 1}}
            if since is not None:
                query["updated_at"] = {"$gte": since}
            read = self._page(query, skip_at_since, "incremental", budget)
            fresh = [c for c in read.records if c.id not in seen or seen[c.id] != c.updated_at]
            seen.update((c.id, c.updated_at) for c in fresh)
            yield PollPage(filter_new_records(state, fresh), self._limit(read, fresh))
            if not read.full or _repeats(read.records, fresh, "incremental", budget.pages):
                return
            if read.records:
                since, skip_at_since = _next_bound(read.records, since, skip_at_since)
            else:
                skip_at_since += read.received

    def open_conversations(self, budget: Budget) -> Iterator[list[Conversation]]:
        """All open conversations in id order, a page at a time (for the full resync).

        Pages by id (``id[$gt]`` the last id read), not by ``$skip``: under ``$skip`` a
        conversation closed while the pass runs moves every later one a place back, and
        the pass would miss one open conversation per close. A resync cut short by its
        budget resumes after the last id it read, on its next run.
        """
        after, self._resync_after = self._resync_after, None
        while True:
            if _ends(budget, "resync", resume_after=after):
                self._resync_after = after
                return
            query: dict[str, Any] = {"status": "open", "$sort": {"id": 1}}
            if after is not None:
                query["id"] = {"$gt": after}
            read = self._page(query, 0, "resync", budget)
            fresh = [c for c in read.records if after is None or c.id > after]
            if fresh:
                yield fresh
                after = max(c.id for c in fresh)
            if not read.full or _repeats(read.records, fresh, "resync", budget.pages):
                return
            if not read.records:  # a full page of malformed items: no id to page on from
                log.error("resync_page_unreadable", page=budget.pages, after=after)
                return

    def _page(self, query: dict[str, Any], skip: int, kind: str, budget: Budget) -> _Read:
        full = {"organization_id": self._client.organization_id, **query}
        full.update({"$limit": self._page_size, "$skip": skip})
        page: Page = self._client.find_page(CONVERSATIONS, full)
        PAGES_FETCHED.labels(kind=kind).inc()
        budget.pages += 1
        parsed = self._client.parse_records(Conversation, page.data, CONVERSATIONS)
        # The server may clamp $limit: a page is full when it holds what the server says it sends
        # (counting items skipped as malformed: paging goes on past them).
        is_full = page.received >= max(1, min(page.limit, self._page_size))
        return _Read(parsed, page.received, is_full, page.served_at)

    def _limit(self, read: _Read, fresh: list[Conversation]) -> datetime:
        """The watermark's limit for this page; records past it are logged (once) and kept in view."""
        limit = horizon(read.served_at, self._clock.now())
        for record in fresh:
            if is_from_the_future(record, limit):
                suppressed = self._future.allow(record.id)
                if suppressed is not None:
                    log.warning(
                        "record_from_the_future",
                        conversation_id=record.id,
                        updated_at=record.updated_at.isoformat() if record.updated_at else None,
                        server_time=read.served_at.isoformat() if read.served_at else None,
                        limit=limit.isoformat(),
                        detail="processed, and read again by every poll; the watermark does not follow it",
                    )
        return limit


def _ends(budget: Budget, kind: str, **context: Any) -> bool:
    """True when the budget is spent; says why in one log line."""
    why = budget.spent()
    if why is None:
        return False
    seconds = round(budget.elapsed(), 1)
    if why == "stopping":
        log.info("tick_stopped", kind=kind, pages=budget.pages, seconds=seconds, **context)
    else:
        log.warning("tick_bounded", kind=kind, reason=why, pages=budget.pages, seconds=seconds, **context)
    return True


def _repeats(page: list[Conversation], fresh: list[Conversation], kind: str, pages: int) -> bool:
    """A full page with nothing new: the server ignores our bounds ($skip, `updated_at`).

    Paging on would fetch the same records until the tick's budget ends; end
    the tick instead (the next tick starts again from the watermark).
    """
    if not page or fresh:
        return False
    log.error("page_repeated", kind=kind, page=pages, first_id=page[0].id, records=len(page))
    return True


def _next_bound(page: list[Conversation], since: datetime | None, skip: int) -> tuple[datetime | None, int]:
    """The lower bound for the next page: the last timestamp and how many records at it we have."""
    last = page[-1].updated_at
    if last is None:
        return since, skip + len(page)
    at_last = sum(1 for c in page if c.updated_at == last)
    return last, (skip + at_last) if last == since else at_last
