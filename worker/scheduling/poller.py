"""The poller: which conversations changed since the last tick, and all open ones for a resync.

Pages are at most 50 (`$limit`), sorted on `(updated_at, id)`. The incremental
poll asks for `updated_at >= watermark` and, for further pages, moves its lower
bound up to the last `updated_at` it received (skipping only the records it has
already read at exactly that timestamp), so a record updated while we page is
seen on a later page or the next tick rather than skipped. With nothing changed
a tick costs one request.

A record that does not parse, or an item of `data` that is not an object at all
(`null`), is skipped with one rate-limited log line (`record_malformed`,
`page_item_skipped`, see `ApiClient`): one poisoned conversation never stops the
poll (the full resync retries it later).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from worker.api.client import ApiClient
from worker.api.models import Conversation
from worker.api.services import CONVERSATIONS
from worker.logs import get_logger
from worker.metrics import PAGES_FETCHED
from worker.state.watermark import WatermarkState, filter_new_records

log = get_logger(__name__)
MAX_PAGES_PER_TICK = 2000  # a guard against a server whose pages never end


@dataclass
class PollResult:
    conversations: list[Conversation] = field(default_factory=list)
    pages: int = 0
    malformed: int = 0


class Poller:
    def __init__(self, client: ApiClient, page_size: int) -> None:
        self._client = client
        self._page_size = page_size

    def changed(self, state: WatermarkState) -> PollResult:
        """Conversations changed at or after the watermark that it has not seen yet."""
        result = PollResult()
        # Start at the watermark itself: records seen there may have changed since (and
        # moved later in the order), so we filter them by id instead of skipping by count.
        since, skip_at_since = state.updated_at, 0
        seen_ids: set[int] = set()
        while result.pages < MAX_PAGES_PER_TICK:
            query: dict[str, Any] = {"$sort": {"updated_at": 1, "id": 1}}
            if since is not None:
                query["updated_at"] = {"$gte": since}
            page, received, full = self._page(query, skip_at_since, "incremental", result)
            fresh = [c for c in page if c.id not in seen_ids]
            seen_ids.update(c.id for c in fresh)
            result.conversations.extend(filter_new_records(state, fresh))
            if not full or _repeats(page, fresh, "incremental", result.pages):
                break
            if page:
                since, skip_at_since = _next_bound(page, since, skip_at_since)
            else:
                skip_at_since += received
        return result

    def open_conversations(self) -> Iterator[list[Conversation]]:
        """All open conversations, a page at a time (for the full resync)."""
        skip, pages = 0, 0
        seen_ids: set[int] = set()
        while pages < MAX_PAGES_PER_TICK:
            query = {"status": "open", "$sort": {"id": 1}}
            page, received, full = self._page(query, skip, "resync", PollResult())
            pages += 1
            fresh = [c for c in page if c.id not in seen_ids]
            seen_ids.update(c.id for c in fresh)
            if fresh:
                yield fresh
            skip += received
            if not full or _repeats(page, fresh, "resync", pages):
                return

    def _page(
        self, query: dict[str, Any], skip: int, kind: str, result: PollResult
    ) -> tuple[list[Conversation], int, bool]:
        """Parsed records, how many came, and whether the page was full (more may follow)."""
        full = {"organization_id": self._client.organization_id, **query}
        full.update({"$limit": self._page_size, "$skip": skip})
        page = self._client.find_page(CONVERSATIONS, full)
        PAGES_FETCHED.labels(kind=kind).inc()
        result.pages += 1
        parsed = self._client.parse_records(Conversation, page.data, CONVERSATIONS)
        result.malformed += page.received - len(parsed)
        # The server may clamp $limit: a page is full when it holds what the server says it sends
        # (counting items skipped as malformed: paging goes on past them).
        is_full = page.received >= max(1, min(page.limit, self._page_size))
        return parsed, page.received, is_full


def _repeats(page: list[Conversation], fresh: list[Conversation], kind: str, pages: int) -> bool:
    """A full page with nothing new: the server ignores our bounds ($skip, `updated_at`).

    Paging on would fetch the same records up to MAX_PAGES_PER_TICK times; end
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
