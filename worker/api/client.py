"""The Conversations API client: httpx, bearer auth, rate limit, read retries, typed errors.

Reads (GET) are retried with exponential backoff and jitter on connection
errors, timeouts, 5xx and 429 (honouring `Retry-After`). Writes are never
retried here: their error says whether they `maybe_applied`, and the caller
decides (read back, then resend or not). Failed *connects* are retried by
`httpx.HTTPTransport(retries=...)`, which is safe for writes because nothing
was sent. All waiting goes through the injected clock, so tests never sleep.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple, Protocol, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, SecretStr, ValidationError

from worker.api.batching import ArrayLimit, Split, merge_streams, split_page, split_query
from worker.api.errors import (
    ApiError,
    BadRequest,
    MalformedResponse,
    RateLimited,
    TransportError,
    from_response,
    redirected,
)
from worker.api.models import Page
from worker.api.query import encode_query
from worker.api.ratelimit import TokenBucket
from worker.clock import Clock, SystemClock
from worker.config import MAX_PAGE_SIZE, Settings
from worker.logs import Throttle, get_logger, register_secret

log = get_logger(__name__)
# A bad record the server sends on every poll is logged once per this interval.
BAD_RECORD_LOG_INTERVAL_S = 600.0
# find_all's guard: 10,000 records at 50 a page. Its callers read a few pages at most.
MAX_FIND_ALL_PAGES = 200

ResponseHook = Callable[[str, str, int, float], None]
"""on_response(service, method, status, seconds); status 0 means no HTTP answer."""
BackoffHook = Callable[[float], None]
"""on_backoff(seconds): called before the client sleeps to retry a read."""


class ApiGate(Protocol):
    """A backoff shared by every process using the token (see `worker.state.api_pause`)."""

    def wait_s(self) -> float:
        """Seconds every caller should still wait before calling the API (0 = go)."""
        ...

    def observe(self, status: int, retry_after_s: float | None) -> None:
        """Learn from an answer: status 0 means no HTTP answer (refused, reset, timed out)."""
        ...


RecordT = TypeVar("RecordT", bound=BaseModel)

READ_METHODS = frozenset({"GET", "HEAD"})
CONNECT_RETRIES = 2
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
MAX_RETRY_AFTER_S = 120.0
# Errors raised before any byte of the request left: a write cannot have been applied.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class Answer(NamedTuple):
    """A decoded answer and the server's clock when it sent it (its `Date`, if parseable)."""

    body: Any
    served_at: datetime | None


class ApiClient:
    """Synchronous client for one organization's token; safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        token: SecretStr | str,
        organization_id: int,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        read_retries: int = 4,
        connect_retries: int = CONNECT_RETRIES,
        rate_limit_per_s: float = 20.0,
        rate_burst: int = 20,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        on_response: ResponseHook | None = None,
        on_backoff: BackoffHook | None = None,
        gate: ApiGate | None = None,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        max_retry_after_s: float = MAX_RETRY_AFTER_S,
    ) -> None:
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        if not self._token.get_secret_value():
            raise ValueError("ApiClient needs an API token (setting INBOXPILOT_API_TOKEN)")
        if read_retries < 0:
            raise ValueError(f"read_retries must be >= 0, got {read_retries}")
        register_secret(self._token.get_secret_value())
        self.base_url = base_url.rstrip("/")
        self.organization_id = organization_id
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._read_retries = read_retries
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._max_retry_after_s = max_retry_after_s
        self._on_response = on_response
        self._on_backoff = on_backoff
        self._gate = gate
        self._bucket = TokenBucket(rate_limit_per_s, rate_burst, self._clock)
        self._bad_records = Throttle(BAD_RECORD_LOG_INTERVAL_S)
        self._thread = threading.local()  # per thread: when its latest request left
        self._arrays = ArrayLimit()  # the longest array a query may carry (learnt; see batching)
        # A whole answer's deadline: an answer that trickles in never trips a read timeout.
        self._answer_deadline_s = timeout_s + connect_timeout_s
        self._http = httpx.Client(
            base_url=self.base_url,
            transport=transport or httpx.HTTPTransport(retries=connect_retries),
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            headers={"Accept": "application/json", "User-Agent": "inboxpilot"},
            # Never: a redirect would carry the token elsewhere, and its body is not an answer.
            follow_redirects=False,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        clock: Clock | None = None,
        transport: httpx.BaseTransport | None = None,
        **overrides: Any,
    ) -> ApiClient:
        """Build the client from the one Settings object."""
        options: dict[str, Any] = {
            "timeout_s": settings.http_timeout_s,
            "connect_timeout_s": settings.http_connect_timeout_s,
            "read_retries": settings.read_retries,
            "rate_limit_per_s": settings.rate_limit_per_s,
            "rate_burst": settings.rate_burst,
            **overrides,
        }
        return cls(
            str(settings.api_url),
            settings.api_token,
            settings.organization_id,
            transport=transport,
            clock=clock,
            **options,
        )

    def __repr__(self) -> str:
        return f"ApiClient(base_url={self.base_url!r}, organization_id={self.organization_id!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- Feathers service methods -------------------------------------------------

    @property
    def batch_limit(self) -> int:
        """Ids (or `$or` branches) one find may carry: 50, or 20 once the server refused more."""
        return self._arrays.limit

    def find_page(self, path: str, query: Mapping[str, Any] | None = None) -> Page:
        """One `find`: the paginated envelope, as the server sent it (it may clamp `$limit`).

        A query with an array longer than the server takes is answered from parts (see
        `worker.api.batching`): the same page, `total` summed over the parts."""
        if query:
            split = split_query(query, self._arrays.limit)
            if split is not None:
                return self._split_page(path, query, split)
        try:
            return self._find_page_once(path, query)
        except BadRequest as exc:
            split = self._arrays.split_refused(query) if query else None
            if split is None:
                raise
            page = self._split_page(path, query or {}, split)  # a part refused as well: its 400 stands
            self._arrays.confirm(query or {}, path, exc.status or 400)
            return page

    def _split_page(self, path: str, query: Mapping[str, Any], split: Split) -> Page:
        started: list[datetime | None] = []

        def fetch(part: Mapping[str, Any]) -> Page:
            page = self._find_page_once(path, part)
            if not started:
                started.append(self.last_sent_at())
            return page

        page = split_page(fetch, query, split)
        if started:  # the read is as old as its first part (a re-check measures its age by it)
            self._thread.sent_at = started[0]
        return page

    def _find_page_once(self, path: str, query: Mapping[str, Any] | None = None) -> Page:
        answer = self._exchange("GET", path, query)
        body = answer.body
        items = body.get("data") if isinstance(body, dict) else None
        objects = [item for item in items if isinstance(item, dict)] if isinstance(items, list) else None
        try:
            page = Page.model_validate(body if objects is None else {**body, "data": objects})
        except ValidationError as exc:
            raise MalformedResponse(
                f"expected a page {{total, limit, skip, data}}: {_first_error(exc)}",
                method="GET",
                path=path,
            ) from None
        if isinstance(items, list) and objects is not None and len(objects) < len(items):
            # One `null` must not cost the whole page: skip it, keep paging by what was sent.
            page._received = len(items)
            self._note_skipped_items(path, items)
        page._served_at = answer.served_at
        return page

    def find_all(
        self,
        path: str,
        query: Mapping[str, Any] | None = None,
        *,
        page_size: int = MAX_PAGE_SIZE,
        sort: Mapping[str, int] | None = None,
        id_key: str = "id",
        max_pages: int = MAX_FIND_ALL_PAGES,
    ) -> Iterator[dict[str, Any]]:
        """Every record matching `query`, page by page, each id at most once per pass.

        The sort always ends on `id_key` so the order is total and pages neither
        overlap nor leave gaps when records are inserted while paging. `$skip`
        advances by the records actually received, since the server may clamp.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
        base = dict(query or {})
        for reserved in ("$limit", "$skip"):
            if reserved in base:
                raise ValueError(f"find_all sets {reserved} itself; use page_size instead")
        order = _stable_sort(sort or base.pop("$sort", None), id_key)
        whole = {**base, "$sort": order}
        split = split_query(whole, self._arrays.limit)
        if split is not None:
            yield from self._merged(path, split, order, page_size, id_key, max_pages)
            return
        try:
            first = self._find_page_once(path, {**whole, "$limit": page_size, "$skip": 0})
        except BadRequest as exc:
            split = self._arrays.split_refused(whole)
            if split is None:
                raise
            first = self._find_page_once(path, {**split.parts[0], "$limit": page_size, "$skip": 0})
            self._arrays.confirm(whole, path, exc.status or 400)
            yield from self._merged(path, split, order, page_size, id_key, max_pages, first)
            return
        yield from self._walk(path, base, order, page_size, id_key, max_pages, first)

    def _merged(
        self,
        path: str,
        split: Split,
        order: Mapping[str, int],
        page_size: int,
        id_key: str,
        max_pages: int,
        first: Page | None = None,
    ) -> Iterator[dict[str, Any]]:
        """A split find: each part paged on its own, merged as the one find would list them."""
        streams = [
            self._walk(path, part, order, page_size, id_key, max_pages, first if index == 0 else None)
            for index, part in enumerate(split.parts)
        ]
        yield from merge_streams(streams, order, id_key, union=split.union)

    def _walk(
        self,
        path: str,
        base: Mapping[str, Any],
        order: Mapping[str, int],
        page_size: int,
        id_key: str,
        max_pages: int,
        first: Page | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One un-split find, page by page (`first`: its first page, already read)."""
        seen: set[Any] = set()
        skip = pages = 0
        while True:
            query = {**base, "$sort": order, "$limit": page_size, "$skip": skip}
            page = first if first is not None else self._find_page_once(path, query)
            first = None
            fresh = 0
            for record in page.data:
                key = record.get(id_key)
                if key is not None and key in seen:
                    continue
                seen.add(key)
                fresh += 1
                yield record
            if page.data and not fresh:
                # Nothing new on a whole page: the server ignores $skip. With a `total`
                # that lies as well, paging on would never end.
                log.error("page_repeated", path=path, skip=skip, records=len(page.data))
                return
            skip += page.received
            if _last_page(page, page_size, skip):
                return
            pages += 1
            if pages >= max_pages:
                # A server that invents new records on every page would hold the caller forever.
                log.error("find_all_bounded", path=path, pages=pages, records=len(seen))
                return

    def find_all_as(
        self, model: type[RecordT], path: str, query: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Iterator[RecordT]:
        """`find_all`, each record validated into `model`; malformed records are skipped (logged)."""
        for record in self.find_all(path, query, **kwargs):
            yield from self.parse_records(model, [record], path)

    def get(self, path: str, id: int | str, query: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return _expect_object(self.request("GET", _item(path, id), query=query), "GET", path)

    def create(
        self, path: str, body: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        result = self.request("POST", path, json_body=body, idempotency_key=idempotency_key)
        return _expect_object(result, "POST", path)

    def patch(
        self,
        path: str,
        id: int | str,
        body: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        query: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        result = self.request(
            "PATCH", _item(path, id), query=query, json_body=body, idempotency_key=idempotency_key
        )
        return _expect_object(result, "PATCH", path)

    def remove(self, path: str, id: int | str, query: Mapping[str, Any] | None = None) -> Any:
        return self.request("DELETE", _item(path, id), query=query)

    # --- records ------------------------------------------------------------------------

    def parse_records(self, model: type[RecordT], records: Iterable[Any], path: str) -> list[RecordT]:
        """Validate each record; one that does not fit `model` is skipped with a rate-limited log line."""
        out = []
        for record in records:
            try:
                out.append(model.model_validate(record))
            except ValidationError as exc:
                record_id = record.get("id", record.get("_id")) if isinstance(record, dict) else None
                suppressed = self._bad_records.allow((path, repr(record_id)))
                if suppressed is not None:
                    log.error(
                        "record_malformed",
                        path=path,
                        record_id=record_id,
                        error=_first_error(exc),
                        suppressed=suppressed,
                    )
        return out

    def _note_skipped_items(self, path: str, items: list[Any]) -> None:
        bad = [item for item in items if not isinstance(item, dict)]
        suppressed = self._bad_records.allow((path, "non-object items"))
        if suppressed is not None:
            kinds = sorted({"null" if item is None else type(item).__name__ for item in bad})
            log.error("page_item_skipped", path=path, skipped=len(bad), kinds=kinds, suppressed=suppressed)

    # --- the request loop -------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        json_body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Send one call; reads are retried on transient failures, writes never."""
        return self._exchange(method, path, query, json_body, idempotency_key).body

    def _exchange(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        json_body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Answer:
        method = method.upper()
        path = "/" + path.lstrip("/")
        attempt = 0
        while True:
            try:
                return self._send(method, path, query, json_body, idempotency_key)
            except ApiError as exc:
                delay_s = self._retry_delay(method, exc, attempt)
                if delay_s is None:
                    raise
                log.info(
                    "api_retry_scheduled",
                    method=method,
                    path=path,
                    status=exc.status,
                    error=exc.name,
                    attempt=attempt + 1,
                    delay_s=round(delay_s, 3),
                )
                self._note_backoff(delay_s)
                self._clock.sleep(delay_s)
                attempt += 1

    def put_signed(self, url: str, data: bytes, content_type: str) -> None:
        """PUT a file to a signed upload URL: without our token (the signature is the
        permission, and the URL may be another host), never following a redirect."""
        path = UPLOAD_PATH_LABEL  # never the URL itself: its query string is a credential
        self._bucket.acquire()
        started = time.perf_counter()
        try:
            response = self._http.put(url, content=data, headers={"Content-Type": content_type})
        except httpx.RequestError as exc:
            self._observe("PUT", path, 0, started)
            raise _request_error(exc, "PUT", path) from None
        self._observe("PUT", path, response.status_code, started)
        status = response.status_code
        if 300 <= status < 400:
            raise redirected(status, None, method="PUT", path=path)
        if status >= 400 or status < 200:
            raise from_response(status, response.content, method="PUT", path=path)

    def last_sent_at(self) -> datetime | None:
        """When this thread's latest request left (after any rate-limit wait), on the client's clock.

        The executor measures how old its re-check is when the write goes out.
        """
        return getattr(self._thread, "sent_at", None)

    def _retry_delay(self, method: str, exc: ApiError, attempt: int) -> float | None:
        """Seconds to wait before retrying, or None when the error must be raised."""
        if method not in READ_METHODS or not exc.retryable or attempt >= self._read_retries:
            return None
        if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
            # Waiting longer than this in a worker thread is worse than failing the task.
            return exc.retry_after_s if exc.retry_after_s <= self._max_retry_after_s else None
        ceiling = min(self._backoff_max_s, self._backoff_base_s * 2.0**attempt)
        # "Equal jitter": at least half the backoff, the rest random, so threads hitting
        # the same outage do not retry in lockstep.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None,
        json_body: Mapping[str, Any] | None,
        idempotency_key: str | None,
    ) -> Answer:
        self._wait_for_gate(method, path)
        self._bucket.acquire()
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        if idempotency_key is not None and method not in READ_METHODS:
            headers["Idempotency-Key"] = idempotency_key
        started = time.perf_counter()
        self._thread.sent_at = self._clock.now()
        request = self._http.build_request(
            method,
            path,
            params=tuple(encode_query(query)) if query else None,
            json=dict(json_body) if json_body is not None else None,
            headers=headers,
        )
        try:
            response = _read_within(self._http.send(request, stream=True), self._answer_deadline_s)
        except httpx.RequestError as exc:
            self._observe(method, path, 0, started)
            self._tell_gate(0, None)
            raise _request_error(exc, method, path) from None
        self._observe(method, path, response.status_code, started)
        self._tell_gate(response.status_code, self._parse_retry_after(response.headers.get("Retry-After")))
        return Answer(self._decode(response, method, path), _server_date(response))

    def _wait_for_gate(self, method: str, path: str) -> None:
        """Another process was told to back off: do not call until then (reads wait, writes retry)."""
        if self._gate is None:
            return
        wait_s = self._gate.wait_s()
        if wait_s > 0:
            raise RateLimited(
                "the API is paused for every worker (shared backoff); nothing was sent",
                name="SharedPause",
                retry_after_s=wait_s,
                method=method,
                path=path,
            )

    def _tell_gate(self, status: int, retry_after_s: float | None) -> None:
        if self._gate is None:
            return
        try:
            self._gate.observe(status, retry_after_s)
        except Exception:  # the shared backoff is advisory: never break a call over it
            log.warning("api_gate_failed", exc_info=True)

    def _decode(self, response: httpx.Response, method: str, path: str) -> Any:
        status = response.status_code
        if 300 <= status < 400:
            raise redirected(status, response.headers.get("Location"), method=method, path=path)
        if status >= 400 or status < 200:
            raise from_response(
                status,
                response.content,
                method=method,
                path=path,
                retry_after_s=self._parse_retry_after(response.headers.get("Retry-After")),
            )
        if not response.content.strip():
            return None
        try:
            return json.loads(response.content)
        except ValueError:
            raise MalformedResponse(
                f"answer {status} is not JSON ({response.headers.get('content-type', 'no content-type')})",
                status=status,
                method=method,
                path=path,
                maybe_applied=method not in READ_METHODS,
            ) from None

    def _parse_retry_after(self, value: str | None) -> float | None:
        """Retry-After as seconds: either a number or an HTTP date."""
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when: datetime = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - self._clock.now()).total_seconds())

    def _observe(self, method: str, path: str, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        log.debug("api_request", method=method, path=path, status=status, ms=round(seconds * 1000, 1))
        if self._on_response is None:
            return
        try:
            self._on_response(service_of(path), method, status, seconds)
        except Exception:  # a metrics hook must never break a call
            log.warning("api_response_hook_failed", exc_info=True)

    def _note_backoff(self, seconds: float) -> None:
        if self._on_backoff is None:
            return
        try:
            self._on_backoff(seconds)
        except Exception:  # a metrics hook must never break a call
            log.warning("api_backoff_hook_failed", exc_info=True)


def _read_within(response: httpx.Response, deadline_s: float) -> httpx.Response:
    """The whole answer, or `ReadTimeout` when it is still arriving `deadline_s` after the request.

    httpx's timeouts are per read: a server sending a byte every second holds a
    call (a poll tick, an actor attempt) for as long as it likes.
    """
    if response.is_stream_consumed:  # already in memory (an in-process transport built it whole)
        return response
    deadline = time.monotonic() + deadline_s
    chunks = []
    try:
        for chunk in response.iter_raw():
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout(
                    f"the answer was still arriving at the request's deadline ({deadline_s:g} s)",
                    request=response.request,
                )
    finally:
        response.close()
    return httpx.Response(
        response.status_code, headers=response.headers, content=b"".join(chunks), request=response.request
    )


def _server_date(response: httpx.Response) -> datetime | None:
    """The answer's `Date` as aware UTC; the last one when a proxy added its own."""
    for value in reversed(response.headers.get_list("Date")):
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        if when.tzinfo is not None:
            return when.astimezone(UTC)
    return None


UPLOAD_PATH_LABEL = "(signed upload)"


def _item(path: str, id: int | str) -> str:
    """`/service/:id`, the id quoted so it can never add a path segment."""
    return f"{path.rstrip('/')}/{quote(str(id), safe='')}"


def service_of(path: str) -> str:
    """The service name of a path: `/conversations/12` -> `conversations`."""
    return path.strip("/").split("/", 1)[0]


def parse_record(model: type[RecordT], record: Any, path: str) -> RecordT:
    """Validate one record, turning a shape mismatch into MalformedResponse."""
    try:
        return model.model_validate(record)
    except ValidationError as exc:
        raise MalformedResponse(
            f"record is not a valid {model.__name__}: {_first_error(exc)}", path=path
        ) from None


def _last_page(page: Page, page_size: int, skip: int) -> bool:
    """A short page ends paging, and so does a `total` reached exactly.

    A `total` below what was already received is a lie: it neither ends paging
    (a short page does) nor, when too large, extends it past a short page.
    """
    full = max(1, min(page.limit, page_size))
    return page.received < full or skip == page.total


def _stable_sort(sort: Any, id_key: str) -> dict[str, int]:
    order = {str(k): int(v) for k, v in dict(sort or {}).items()}
    # A unique key last makes the order total: ties would otherwise shuffle between pages.
    order.setdefault(id_key, 1)
    return order


def _expect_object(body: Any, method: str, path: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise MalformedResponse(
            f"expected a JSON object, got {type(body).__name__}",
            method=method,
            path=path,
            maybe_applied=method not in READ_METHODS,
        )
    return body


def _first_error(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def _request_error(exc: httpx.RequestError, method: str, path: str) -> ApiError:
    """The one place httpx's exceptions become ours."""
    if isinstance(exc, httpx.DecodingError):
        return MalformedResponse(
            f"answer body could not be decoded: {exc}",
            method=method,
            path=path,
            maybe_applied=method not in READ_METHODS,
        )
    sent = not isinstance(exc, _NOT_SENT)
    kind = type(exc).__name__
    return TransportError(
        f"{kind}: {exc}" if str(exc) else kind,
        name=kind,
        method=method,
        path=path,
        maybe_applied=sent and method not in READ_METHODS,
    )
