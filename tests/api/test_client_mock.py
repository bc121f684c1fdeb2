"""ApiClient wire behaviour against httpx.MockTransport: exact requests, retries, errors, redaction."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Iterator
from datetime import timedelta
from email.utils import format_datetime as http_date
from typing import Any

import httpx
import pytest

from worker.api import errors
from worker.api.client import ApiClient
from worker.clock import FakeClock
from worker.config import load_settings
from worker.logs import configure_logging

TOKEN = "tok-SECRET-4f1e9a"  # a test token, asserted never to leak
Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that answers from a queue and records every request."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer


def feathers_error(status: int, name: str, message: str, **headers: str) -> httpx.Response:
    body = {"name": name, "message": message, "code": status, "className": name.lower()}
    return httpx.Response(status, json=body, headers=headers)


def make_client(handler: Recorder, clock: FakeClock, **kwargs: Any) -> ApiClient:
    options: dict[str, Any] = {"read_retries": 3, "rate_limit_per_s": 1000, "rate_burst": 1000}
    options.update(kwargs)
    return ApiClient(
        "http://api.test",
        TOKEN,
        7,
        transport=httpx.MockTransport(handler),
        clock=clock,
        rng=random.Random(1),
        **options,
    )


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(level="DEBUG", fmt="json", stream=stream)
    yield stream
    configure_logging(level="WARNING", fmt="json", stream=io.StringIO())


# --- requests on the wire ---------------------------------------------------------


def test_get_sends_bearer_and_query(clock: FakeClock) -> None:
    rec = Recorder(httpx.Response(200, json={"id": 3, "channel": "sms"}))
    client = make_client(rec, clock)
    assert client.get("/conversations", 3, {"organization_id": 7}) == {"id": 3, "channel": "sms"}
    (request,) = rec.requests
    assert request.method == "GET"
    assert request.url.path == "/conversations/3"
    assert request.url.params["organization_id"] == "7"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert "idempotency-key" not in request.headers


def test_create_and_patch_carry_idempotency_key_and_json(clock: FakeClock) -> None:
    rec = Recorder(httpx.Response(201, json={"_id": "m1"}), httpx.Response(200, json={"id": 4}))
    client = make_client(rec, clock)
    client.create("/conversation-messages-sms", {"conversation_id": 4}, idempotency_key="k-1")
    client.patch("/conversations", 4, {"status": "closed"}, idempotency_key="k-2")
    post, patch = rec.requests
    assert (post.method, post.headers["idempotency-key"]) == ("POST", "k-1")
    assert json.loads(post.content) == {"conversation_id": 4}
    assert (patch.method, patch.url.path, patch.headers["idempotency-key"]) == (
        "PATCH",
        "/conversations/4",
        "k-2",
    )
    assert json.loads(patch.content) == {"status": "closed"}


def test_write_without_key_sends_no_header(clock: FakeClock) -> None:
    rec = Recorder(httpx.Response(200, json={"id": 1}))
    make_client(rec, clock).remove("/conversations", 1)
    assert rec.requests[0].method == "DELETE"
    assert "idempotency-key" not in rec.requests[0].headers


def test_feathers_operators_reach_the_server_qs_style(clock: FakeClock) -> None:
    rec = Recorder(httpx.Response(200, json={"total": 0, "limit": 50, "skip": 0, "data": []}))
    make_client(rec, clock).find_page("/conversations", {"id": {"$in": [1, 2]}, "$sort": {"id": 1}})
    params = rec.requests[0].url.params
    assert params.get_list("id[$in][]") == ["1", "2"]
    assert params["$sort[id]"] == "1"


# --- find_all -----------------------------------------------------------------------


def paged_server(records: list[dict[str, Any]], clamp: int = 50) -> Handler:
    """A tiny Feathers find: sorted by id, honours $skip, clamps $limit."""

    def handle(request: httpx.Request) -> httpx.Response:
        limit = min(int(request.url.params["$limit"]), clamp)
        skip = int(request.url.params["$skip"])
        data = sorted(records, key=lambda r: r["id"])[skip : skip + limit]
        return httpx.Response(200, json={"total": len(records), "limit": limit, "skip": skip, "data": data})

    return handle


def test_find_all_pages_with_limit_skip_and_stable_sort(clock: FakeClock) -> None:
    records = [{"id": i, "channel": "sms"} for i in range(1, 121)]
    rec = Recorder(paged_server(records))
    got = list(make_client(rec, clock).find_all("/conversations", {"status": "open"}))
    assert [r["id"] for r in got] == list(range(1, 121))
    assert [r.url.params["$skip"] for r in rec.requests] == ["0", "50", "100"]
    assert all(r.url.params["$limit"] == "50" for r in rec.requests)
    assert all(r.url.params["$sort[id]"] == "1" for r in rec.requests)
    assert all(r.url.params["status"] == "open" for r in rec.requests)


def test_find_all_advances_by_records_received_when_server_clamps(clock: FakeClock) -> None:
    records = [{"id": i} for i in range(1, 46)]
    rec = Recorder(paged_server(records, clamp=20))
    got = list(make_client(rec, clock).find_all("/conversations", page_size=50))
    assert [r["id"] for r in got] == list(range(1, 46))
    assert [r.url.params["$skip"] for r in rec.requests] == ["0", "20", "40"]


def test_find_all_caller_sort_gets_id_tiebreak(clock: FakeClock) -> None:
    rec = Recorder(httpx.Response(200, json={"total": 0, "limit": 50, "skip": 0, "data": []}))
    list(make_client(rec, clock).find_all("/conversations", sort={"updated_at": 1}))
    keys = [k for k, _ in rec.requests[0].url.params.multi_items() if k.startswith("$sort")]
    assert keys == ["$sort[updated_at]", "$sort[id]"]


def test_find_all_stops_on_a_short_page_even_if_total_lies(clock: FakeClock) -> None:
    rec = Recorder(
        httpx.Response(200, json={"total": 500, "limit": 50, "skip": 0, "data": [{"id": 1}]}),
        httpx.Response(200, json={"total": 500, "limit": 50, "skip": 1, "data": []}),
    )
    assert [r["id"] for r in make_client(rec, clock).find_all("/conversations")] == [1]
    assert len(rec.requests) == 1  # one record of 50: the last page, whatever `total` says


def test_find_all_pages_past_a_total_that_is_too_small(clock: FakeClock) -> None:
    full = [{"id": i} for i in range(1, 51)]
    rec = Recorder(
        httpx.Response(200, json={"total": 1, "limit": 50, "skip": 0, "data": full}),
        httpx.Response(200, json={"total": 1, "limit": 50, "skip": 50, "data": [{"id": 51}]}),
    )
    assert len(list(make_client(rec, clock).find_all("/conversations"))) == 51


def test_find_all_never_yields_an_id_twice(clock: FakeClock) -> None:
    # A record inserted before the cursor shifts the next page by one: id 2 comes back again.
    rec = Recorder(
        httpx.Response(200, json={"total": 4, "limit": 2, "skip": 0, "data": [{"id": 1}, {"id": 2}]}),
        httpx.Response(200, json={"total": 4, "limit": 2, "skip": 2, "data": [{"id": 2}, {"id": 3}]}),
    )
    got = list(make_client(rec, clock).find_all("/conversations", page_size=2))
    assert [r["id"] for r in got] == [1, 2, 3]


def test_find_all_refuses_oversized_pages_and_own_limit(clock: FakeClock) -> None:
    client = make_client(Recorder(httpx.Response(500)), clock)
    with pytest.raises(ValueError, match="page_size"):
        list(client.find_all("/conversations", page_size=51))
    with pytest.raises(ValueError, match=r"\$limit"):
        list(client.find_all("/conversations", {"$limit": 10}))


def test_find_page_with_wrong_shape_is_malformed(clock: FakeClock) -> None:
    client = make_client(Recorder(httpx.Response(200, json=[{"id": 1}])), clock)
    with pytest.raises(errors.MalformedResponse, match="expected a page"):
        client.find_page("/conversations")


# --- retries --------------------------------------------------------------------------


def test_read_retries_5xx_with_backoff_through_the_clock(clock: FakeClock) -> None:
    start = clock.now()
    rec = Recorder(
        feathers_error(503, "Unavailable", "down"),
        feathers_error(500, "GeneralError", "boom"),
        httpx.Response(200, json={"id": 1}),
    )
    assert make_client(rec, clock).get("/conversations", 1) == {"id": 1}
    assert len(rec.requests) == 3
    waited = (clock.now() - start).total_seconds()
    # backoff 0.5 s then 1 s, each with jitter in [half, full]
    assert 0.25 + 0.5 <= waited <= 0.5 + 1.0


def test_read_gives_up_after_read_retries(clock: FakeClock) -> None:
    rec = Recorder(feathers_error(500, "GeneralError", "boom"))
    with pytest.raises(errors.GeneralError) as info:
        make_client(rec, clock, read_retries=2).get("/conversations", 1)
    assert len(rec.requests) == 3
    assert info.value.retryable and not info.value.maybe_applied


def test_read_retries_timeouts_and_connection_errors(clock: FakeClock) -> None:
    rec = Recorder(
        httpx.ReadTimeout("timed out"),
        httpx.ConnectError("refused"),
        httpx.Response(200, json={"id": 1}),
    )
    assert make_client(rec, clock).get("/conversations", 1) == {"id": 1}
    assert len(rec.requests) == 3


def test_429_honours_retry_after_seconds_without_real_waiting(clock: FakeClock) -> None:
    start = clock.now()
    rec = Recorder(
        feathers_error(429, "TooManyRequests", "slow down", **{"Retry-After": "7"}),
        httpx.Response(200, json={"id": 1}),
    )
    assert make_client(rec, clock).get("/conversations", 1) == {"id": 1}
    assert clock.now() - start == timedelta(seconds=7)


def test_429_honours_retry_after_http_date(clock: FakeClock) -> None:
    start = clock.now()
    retry_at = http_date(start + timedelta(seconds=30), usegmt=True)
    rec = Recorder(
        feathers_error(429, "TooManyRequests", "slow down", **{"Retry-After": retry_at}),
        httpx.Response(200, json={"id": 1}),
    )
    make_client(rec, clock).get("/conversations", 1)
    assert clock.now() - start == timedelta(seconds=30)


def test_429_with_too_long_retry_after_is_raised(clock: FakeClock) -> None:
    rec = Recorder(feathers_error(429, "TooManyRequests", "later", **{"Retry-After": "3600"}))
    with pytest.raises(errors.RateLimited) as info:
        make_client(rec, clock).get("/conversations", 1)
    assert info.value.retry_after_s == 3600
    assert len(rec.requests) == 1


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("POST", feathers_error(500, "GeneralError", "boom")),
        ("PATCH", feathers_error(503, "Unavailable", "down")),
        ("DELETE", feathers_error(502, "BadGateway", "proxy")),
        ("POST", httpx.ReadTimeout("timed out")),
        ("PATCH", httpx.RemoteProtocolError("reset")),
    ],
)
def test_writes_are_never_retried_and_may_have_applied(
    clock: FakeClock, method: str, answer: httpx.Response | Exception
) -> None:
    rec = Recorder(answer, httpx.Response(200, json={"id": 1}))
    client = make_client(rec, clock)
    with pytest.raises(errors.ApiError) as info:
        client.request(method, "/conversations/1", json_body={"status": "closed"}, idempotency_key="k")
    assert len(rec.requests) == 1
    assert info.value.maybe_applied is True
    assert info.value.retryable is True


def test_write_connect_error_was_not_applied(clock: FakeClock) -> None:
    rec = Recorder(httpx.ConnectError("refused"))
    with pytest.raises(errors.TransportError) as info:
        make_client(rec, clock).create("/conversation-messages-sms", {"conversation_id": 1})
    assert info.value.maybe_applied is False
    assert len(rec.requests) == 1


def test_write_429_is_raised_with_retry_after(clock: FakeClock) -> None:
    rec = Recorder(feathers_error(429, "TooManyRequests", "slow", **{"Retry-After": "2"}))
    with pytest.raises(errors.RateLimited) as info:
        make_client(rec, clock).create("/conversations-bulk-actions", {"action": "x"})
    assert (info.value.retry_after_s, info.value.maybe_applied, len(rec.requests)) == (2.0, False, 1)


def test_4xx_is_not_retried(clock: FakeClock) -> None:
    rec = Recorder(feathers_error(404, "NotFound", "No record found for id '9'"))
    with pytest.raises(errors.NotFound, match="No record found"):
        make_client(rec, clock).get("/conversations", 9)
    assert len(rec.requests) == 1


# --- error mapping and malformed answers ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.BadRequest),
        (401, errors.NotAuthenticated),
        (403, errors.Forbidden),
        (404, errors.NotFound),
        (409, errors.Conflict),
        (422, errors.Unprocessable),
        (429, errors.RateLimited),
        (500, errors.GeneralError),
        (503, errors.Unavailable),
        (504, errors.GeneralError),
        (418, errors.ApiError),
    ],
)
def test_status_maps_to_error_class(clock: FakeClock, status: int, cls: type[errors.ApiError]) -> None:
    rec = Recorder(feathers_error(status, "Whatever", "went wrong"))
    with pytest.raises(cls) as info:
        make_client(rec, clock, read_retries=0).get("/conversations", 1)
    assert type(info.value) is cls
    assert info.value.status == status
    assert info.value.message == "went wrong"
    assert "GET /conversations/1" in str(info.value)
    assert info.value.retryable is (status >= 500 or status == 429)


def test_feathers_error_data_is_kept(clock: FakeClock) -> None:
    body = {"name": "BadRequest", "message": "invalid", "code": 400, "data": {"field": "action"}}
    rec = Recorder(httpx.Response(400, json=body))
    with pytest.raises(errors.BadRequest) as info:
        make_client(rec, clock).create("/conversations-bulk-actions", {})
    assert info.value.data == {"field": "action"}
    assert info.value.name == "BadRequest"


def test_non_json_error_body_still_maps_by_status(clock: FakeClock) -> None:
    rec = Recorder(httpx.Response(502, text="<html><body>Bad gateway</body></html>"))
    with pytest.raises(errors.GeneralError, match="Bad gateway"):
        make_client(rec, clock, read_retries=0).get("/conversations", 1)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_non_json_success_body_is_malformed_not_a_crash(clock: FakeClock, method: str) -> None:
    rec = Recorder(httpx.Response(200, text="<html>login page</html>"))
    with pytest.raises(errors.MalformedResponse, match="not JSON") as info:
        make_client(rec, clock).request(method, "/conversations", json_body={} if method == "POST" else None)
    assert info.value.maybe_applied is (method == "POST")
    assert len(rec.requests) == 1


def test_get_of_a_list_is_malformed(clock: FakeClock) -> None:
    rec = Recorder(httpx.Response(200, json=[1, 2]))
    with pytest.raises(errors.MalformedResponse, match="JSON object"):
        make_client(rec, clock).get("/conversations", 1)


def test_empty_delete_answer_is_none(clock: FakeClock) -> None:
    assert make_client(Recorder(httpx.Response(204)), clock).remove("/conversations", 1) is None


# --- rate limit, hooks, settings --------------------------------------------------------------


def test_client_rate_limit_waits_through_the_clock(clock: FakeClock) -> None:
    start = clock.now()
    rec = Recorder(httpx.Response(200, json={"id": 1}))
    client = make_client(rec, clock, rate_limit_per_s=10, rate_burst=2)
    for _ in range(6):
        client.get("/conversations", 1)
    # 2 from the burst, then 4 more at 10/s
    assert clock.now() - start == timedelta(seconds=0.4)


def test_on_response_hook_sees_service_method_status(clock: FakeClock) -> None:
    seen: list[tuple[str, str, int]] = []
    rec = Recorder(feathers_error(404, "NotFound", "x"))
    client = make_client(rec, clock, on_response=lambda s, m, st, sec: seen.append((s, m, st)))
    with pytest.raises(errors.NotFound):
        client.get("/conversations", 1)
    assert seen == [("conversations", "GET", 404)]


def test_failing_hook_does_not_break_the_call(clock: FakeClock) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("metrics down")

    rec = Recorder(httpx.Response(200, json={"id": 1}))
    assert make_client(rec, clock, on_response=broken).get("/conversations", 1) == {"id": 1}


def test_from_settings(clock: FakeClock) -> None:
    settings = load_settings(api_url="http://api.test", api_token=TOKEN, organization_id=9)
    rec = Recorder(httpx.Response(200, json={"id": 1}))
    client = ApiClient.from_settings(settings, clock=clock, transport=httpx.MockTransport(rec))
    client.get("/contacts", 1)
    assert client.organization_id == 9
    assert str(rec.requests[0].url) == "http://api.test/contacts/1"


def test_missing_token_fails_early() -> None:
    with pytest.raises(ValueError, match="INBOXPILOT_API_TOKEN"):
        ApiClient("http://api.test", "", 1)


# --- redaction ----------------------------------------------------------------------------


def test_token_never_in_logs_errors_or_reprs(clock: FakeClock, logs: io.StringIO) -> None:
    rec = Recorder(
        feathers_error(401, "NotAuthenticated", f"invalid token Bearer {TOKEN}"),
        feathers_error(500, "GeneralError", f"echo {TOKEN}"),
        httpx.ReadTimeout("timed out"),
        httpx.Response(200, json={"id": 1}),
    )
    client = make_client(rec, clock, read_retries=0)
    raised: list[errors.ApiError] = []
    for _ in range(3):
        with pytest.raises(errors.ApiError) as info:
            client.get("/conversations", 1)
        raised.append(info.value)
    client.get("/conversations", 1)
    text = logs.getvalue()
    assert "api_request" in text  # the DEBUG request lines were captured
    assert TOKEN not in text
    for exc in raised:
        assert TOKEN not in str(exc)
        assert TOKEN not in repr(exc)
        assert TOKEN not in repr(vars(exc))
    assert TOKEN not in repr(client)


def test_ids_are_quoted_into_one_path_segment(clock: FakeClock) -> None:
    rec = Recorder(httpx.Response(200, json={"_id": "a/b"}))
    make_client(rec, clock).get("/conversation-messages-sms", "a/../b")
    assert rec.requests[0].url.raw_path == b"/conversation-messages-sms/a%2F..%2Fb"
