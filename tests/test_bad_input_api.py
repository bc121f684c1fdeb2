"""Bad API answers: the loop logs a clear error for that conversation or page and goes on.

A transport wrapped around the served simulator rewrites chosen answers:
non-JSON bodies, missing or mistyped fields, a huge page, a `total` that lies,
a page that repeats whatever is asked. One poisoned conversation is quarantined
(skipped, retried after the quarantine period) and never stops a tick.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis

from tests.e2e._exec_helpers import flush_redis
from tests.support.dispatchers import Collector
from tests.support.leading import lead
from worker.api.errors import MalformedResponse
from worker.logs import configure_logging
from worker.rules.book import Rulebook
from worker.rules.loader import load_texts
from worker.runtime import Runtime
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle
from worker.state.quarantine import QUARANTINE_KEY

RULES = """
rules:
  - id: ack
    once: per_inbound_message
    when: {status: open, message_text: help}  # reads the messages
    then:
      - reply: "Thanks, we got your message."
"""

Rewrite = Callable[[httpx.Request, dict[str, Any]], bytes | None]


class Corrupting(httpx.HTTPTransport):
    """Real HTTP to the simulator; `rewrite(request, json)` may replace the answer's body."""

    def __init__(self) -> None:
        super().__init__()
        self.rewrite: Rewrite | None = None
        self.requests: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.requests.append(f"{request.method} {request.url.path}")
        if self.rewrite is None or response.status_code >= 400:
            return response
        body = json.loads(response.read() or b"null")
        new = self.rewrite(request, body)
        if new is None:
            return response
        return httpx.Response(response.status_code, headers={"content-type": "application/json"}, content=new)


@pytest.fixture
def logs() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    return stream


def events(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    return [r for r in records if r.get("event") == name]


@pytest.fixture
def transport() -> Corrupting:
    return Corrupting()


@pytest.fixture
def loop(
    simulator: SimulatorHandle, redis_url: str, transport: Corrupting
) -> Iterator[tuple[Loop, Collector]]:
    flush_redis(redis_url)
    settings = simulator.worker_settings(redis_url, read_retries=0)
    ruleset = load_texts([("t.yaml", RULES)], strict=True).ruleset
    runtime = Runtime.build(
        settings, clock=simulator.clock, transport=transport, rulebook=Rulebook.of(ruleset)
    )
    collector = Collector()
    the_loop = Loop(runtime, collector)
    lead(the_loop, 30)
    yield the_loop, collector
    runtime.close()


def conversations(simulator: SimulatorHandle, n: int) -> list[int]:
    return [int(simulator.sim.new_conversation(channel="webchat")["id"]) for _ in range(n)]


def is_conversation_page(request: httpx.Request) -> bool:
    return request.method == "GET" and request.url.path == "/conversations"


def messages_of(conversation_id: int) -> Callable[[httpx.Request], bool]:
    """A message read that includes the conversation (alone, or in a batch of 50)."""

    def match(request: httpx.Request) -> bool:
        return request.url.path.startswith("/conversation-messages-") and any(
            (key == "conversation_id" or key.endswith("[conversation_id]")) and value == str(conversation_id)
            for key, value in request.url.params.multi_items()
        )

    return match


# --- one poisoned conversation --------------------------------------------------------------

POISONS: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "non_json": lambda body: b"<html>502 Bad Gateway</html>",
    "data_not_a_list": lambda body: json.dumps({**body, "data": {"oops": 1}}).encode(),
    "mistyped_field": lambda body: json.dumps(
        {**body, "data": [{**m, "created_at": "yesterday-ish"} for m in body["data"]]}
    ).encode(),
    "missing_fields": lambda body: json.dumps({"data": body["data"]}).encode(),
}


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_one_poisoned_conversation_is_quarantined_and_the_others_go_on(
    poison: str,
    simulator: SimulatorHandle,
    loop: tuple[Loop, Collector],
    transport: Corrupting,
    logs: io.StringIO,
) -> None:
    the_loop, collector = loop
    first, bad, last = conversations(simulator, 3)
    is_bad = messages_of(bad)
    transport.rewrite = lambda req, body: POISONS[poison](body) if is_bad(req) else None

    the_loop.poll_once()

    assert collector.conversations() == {first, last}
    (quarantined,) = events(logs, "conversation_quarantined")
    assert quarantined["conversation_id"] == bad and quarantined["reason"]
    assert the_loop.quarantine.held() == {bad}

    # While quarantined it is skipped: a resync does not even read its messages.
    transport.requests.clear()
    the_loop.resync_once()
    assert not any(f"conversation_id={bad}" in r for r in transport.requests)

    # Fixed upstream, and the quarantine period over: it is evaluated again.
    transport.rewrite = None
    simulator.clock.advance(timedelta(seconds=the_loop.quarantine.ttl_s + 1))
    the_loop.resync_once()
    assert collector.conversations() == {first, bad, last}
    assert the_loop.quarantine.held() == set()


def test_transient_errors_are_not_quarantined(
    simulator: SimulatorHandle, loop: tuple[Loop, Collector]
) -> None:
    the_loop, collector = loop
    (conv,) = conversations(simulator, 1)
    simulator.sim.set_faults(error_rate=1.0, paths=["/conversation-messages-"])
    the_loop.poll_once()
    assert collector.steps == [] and the_loop.quarantine.held() == set()
    simulator.sim.set_faults(error_rate=0.0)
    the_loop.resync_once()
    assert collector.conversations() == {conv}


def test_a_rule_that_raises_quarantines_only_its_conversation(
    simulator: SimulatorHandle, loop: tuple[Loop, Collector], monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.scheduling.tick as loop_module

    the_loop, collector = loop
    first, bad = conversations(simulator, 2)
    real = loop_module.evaluate

    def evaluate(ruleset: Any, snapshot: Any, *args: Any, **kwargs: Any) -> Any:
        if snapshot.conversation.id == bad:
            raise KeyError("a condition met data it did not expect")
        return real(ruleset, snapshot, *args, **kwargs)

    monkeypatch.setattr(loop_module, "evaluate", evaluate)
    the_loop.poll_once()
    assert collector.conversations() == {first}
    assert the_loop.quarantine.held() == {bad}
    assert redis.Redis  # the quarantine lives in Redis, shared by every scheduler
    assert the_loop.runtime.redis.zcard(QUARANTINE_KEY) == 1


# --- bad pages ---------------------------------------------------------------------------------


def test_a_page_that_is_not_json_fails_the_tick_clearly_and_the_next_tick_goes_on(
    simulator: SimulatorHandle, loop: tuple[Loop, Collector], transport: Corrupting
) -> None:
    the_loop, collector = loop
    ids = conversations(simulator, 3)
    transport.rewrite = lambda req, body: b"Service Unavailable" if is_conversation_page(req) else None
    with pytest.raises(MalformedResponse, match="not JSON"):
        the_loop.poll_once()
    assert the_loop.watermark.load().updated_at is None  # nothing skipped
    transport.rewrite = None
    the_loop.poll_once()
    assert collector.conversations() == set(ids)


def test_malformed_records_on_a_page_are_skipped(
    simulator: SimulatorHandle, loop: tuple[Loop, Collector], transport: Corrupting, logs: io.StringIO
) -> None:
    the_loop, collector = loop
    ids = conversations(simulator, 4)
    broken = {ids[1]: {"id": "not-a-number"}, ids[2]: {"channel": None}}

    def rewrite(req: httpx.Request, body: dict[str, Any]) -> bytes | None:
        if not is_conversation_page(req):
            return None
        data = [{**r, **broken.get(r["id"], {})} for r in body["data"]]
        return json.dumps({**body, "data": data}).encode()

    transport.rewrite = rewrite
    the_loop.poll_once()
    assert collector.conversations() == {ids[0], ids[3]}
    assert len(events(logs, "record_malformed")) == 2


@pytest.mark.parametrize("total", [0, 1, 10**9])
def test_a_total_that_lies_changes_nothing(
    total: int, simulator: SimulatorHandle, loop: tuple[Loop, Collector], transport: Corrupting
) -> None:
    the_loop, collector = loop
    ids = conversations(simulator, 60)  # two pages
    transport.rewrite = lambda req, body: (
        json.dumps({**body, "total": total}).encode() if is_conversation_page(req) else None
    )
    the_loop.poll_once()
    assert collector.conversations() == set(ids)
    collector.steps.clear()
    the_loop.resync_once()  # everything already claimed: nothing new, and it ends
    assert collector.steps == []


def test_a_huge_page_is_processed(
    simulator: SimulatorHandle, loop: tuple[Loop, Collector], transport: Corrupting
) -> None:
    """A server that ignores $limit and sends everything at once."""
    the_loop, collector = loop
    ids = conversations(simulator, 400)
    sim = simulator.sim

    def everything(req: httpx.Request, body: dict[str, Any]) -> bytes | None:
        if not is_conversation_page(req) or req.url.params.get("$skip", "0") != "0":
            return None
        records = [sim.conversation(i) for i in ids]
        return json.dumps({**body, "data": records, "total": len(records)}, default=str).encode()

    transport.rewrite = everything
    the_loop.poll_once()
    assert collector.conversations() == set(ids)


@pytest.mark.parametrize("job", ["poll_once", "resync_once"])
def test_a_page_that_repeats_ends_the_tick(
    job: str,
    simulator: SimulatorHandle,
    loop: tuple[Loop, Collector],
    transport: Corrupting,
    logs: io.StringIO,
) -> None:
    """A server that ignores $skip and the bounds answers the first page forever."""
    the_loop, collector = loop
    ids = conversations(simulator, 60)
    first_page: list[bytes] = []

    def repeat(req: httpx.Request, body: dict[str, Any]) -> bytes | None:
        if not is_conversation_page(req):
            return None
        if not first_page:
            first_page.append(json.dumps(body).encode())
        return first_page[0]

    transport.rewrite = repeat
    getattr(the_loop, job)()
    pages = [r for r in transport.requests if r == "GET /conversations"]
    assert len(pages) <= 3, f"{len(pages)} pages fetched"
    assert events(logs, "page_repeated")
    assert collector.conversations() == set(ids[:50])


def test_find_all_ends_on_a_repeating_page_even_when_total_lies(
    simulator: SimulatorHandle, loop: tuple[Loop, Collector], transport: Corrupting, logs: io.StringIO
) -> None:
    """The actors' `id[$in]` reads page with `find_all`, which stops on `total`: a lying
    `total` and a server that ignores $skip would otherwise page forever."""
    the_loop, _ = loop
    ids = conversations(simulator, 60)

    def repeat_and_lie(req: httpx.Request, body: dict[str, Any]) -> bytes | None:
        if not is_conversation_page(req):
            return None
        first = [simulator.sim.conversation(i) for i in ids[:50]]
        return json.dumps({**body, "data": first, "total": 10**9, "skip": 0}, default=str).encode()

    transport.rewrite = repeat_and_lie
    found = list(the_loop.runtime.api.conversations.find({"id": {"$in": ids}}))
    assert [c.id for c in found] == ids[:50]
    assert events(logs, "page_repeated")
