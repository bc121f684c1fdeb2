"""A hostile Conversations API: the simulator behind an ASGI wrapper that answers chosen
requests the way a broken, misconfigured or malicious server would.

Served over real loopback HTTP (`served_hostile_api`), so the worker's client, its
transport and its parsing all run exactly as in production. Each trap matches
requests by method and path prefix and replaces (or rewrites) the simulator's answer:

- `redirect`: a 3xx with a `Location`, with no body or with a page-shaped JSON body;
- `html`: a 200 that is a login page, not JSON;
- `null_items`: `null` (or another non-object) slipped into a page's `data`;
- `endless`: every find answers a full page of conversations with ids never seen before,
  and a `total` that lies (the server never runs out);
- `lying_total`: the simulator's page with a `total` that lies;
- `slow`: the answer trickles, one byte at a time, for `seconds` (each read returns,
  so only a deadline on the whole attempt ends it) before the real body.

`stamp` writes a record with a chosen `updated_at` (e.g. in 2099) into the simulator's
own store: the server really holds it, and answers queries on it accordingly.

Traps apply to API paths only (`/__admin` is never trapped). `wait_for_requests` lets a
test await that the worker got somewhere, with a deadline and without sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.clock import FakeClock
from worker.simulator.server import serve
from worker.simulator.simulator import Simulator
from worker.simulator.store import to_wire
from worker.simulator.testing import SimulatorHandle

Answer = Callable[[Scope, Receive, Send], Any]
ENDLESS_FIRST_ID = 10_000_000
LOGIN_PAGE = b"<!doctype html><html><body><form action='/login'>Sign in</form></body></html>"


@dataclass
class Trap:
    """Requests it catches (method None = any) and how many more times (None = always)."""

    method: str | None
    path_prefix: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    times: int | None = None
    hits: int = 0

    def catches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return (self.method is None or self.method == method) and path.startswith(self.path_prefix)


class HostileApi:
    """ASGI app: the simulator's answers, except where a trap says otherwise."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self._app: ASGIApp = sim.app
        self._traps: list[Trap] = []
        self._lock = threading.Condition()
        self.requests: list[tuple[str, str, str]] = []  # (method, path, query) of API calls
        self._ids = itertools.count(ENDLESS_FIRST_ID)

    # --- setting traps ----------------------------------------------------------------------

    def redirect(
        self,
        path_prefix: str,
        *,
        method: str | None = None,
        status: int = 302,
        location: str = "https://login.example.invalid/sso?next=/conversations",
        page_body: bool = False,
        times: int | None = None,
    ) -> Trap:
        """3xx with `Location`; `page_body` adds a page-shaped JSON body with one conversation."""
        options = {"status": status, "location": location, "page_body": page_body}
        return self._add(Trap(method, path_prefix, "redirect", options, times))

    def html(self, path_prefix: str, *, method: str | None = None, times: int | None = None) -> Trap:
        return self._add(Trap(method, path_prefix, "html", {}, times))

    def null_items(
        self, path_prefix: str, *, items: tuple[Any, ...] = (None,), times: int | None = None
    ) -> Trap:
        """Insert `items` (default one `null`) at the front of a find's `data`."""
        return self._add(Trap("GET", path_prefix, "null_items", {"items": items}, times))

    def endless(
        self, path_prefix: str = "/conversations", *, total: int = 10**9, delay_s: float = 0.0
    ) -> Trap:
        """Every find under `path_prefix` answers a full page of brand-new conversations
        (after `delay_s`: the server's pace)."""
        return self._add(Trap("GET", path_prefix, "endless", {"total": total, "delay_s": delay_s}))

    def lying_total(self, path_prefix: str, total: int) -> Trap:
        return self._add(Trap("GET", path_prefix, "lying_total", {"total": total}))

    def slow(
        self, path_prefix: str, seconds: float, *, method: str | None = None, times: int | None = None
    ) -> Trap:
        """Apply the request, then trickle the answer for `seconds` before its body."""
        return self._add(Trap(method, path_prefix, "slow", {"seconds": seconds}, times))

    def clear(self) -> None:
        with self._lock:
            self._traps.clear()

    def _add(self, trap: Trap) -> Trap:
        with self._lock:
            self._traps.append(trap)
        return trap

    # --- server-side data ---------------------------------------------------------------------

    def stamp(self, conversation_id: int, updated_at: datetime) -> None:
        """Store the conversation with this `updated_at` (the server really holds it)."""
        with self.sim.lock:
            store = self.sim.store
            record = store.conversation(conversation_id)
            store.conversations.set_updated_at(record, updated_at)

    # --- observing -----------------------------------------------------------------------------

    def wait_for_requests(
        self, predicate: Callable[[list[tuple[str, str, str]]], bool], timeout_s: float
    ) -> bool:
        """Block until `predicate(requests)` holds (True) or `timeout_s` passes (False)."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self.requests), timeout_s)

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return sum(1 for m, p, _ in self.requests if m == method and p == path)

    # --- ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/__"):
            await self._app(scope, receive, send)
            return
        trap = self._note(scope)
        if trap is None:
            await self._app(scope, receive, send)
            return
        handler = getattr(self, f"_answer_{trap.kind}")
        await handler(trap, scope, receive, send)

    def _note(self, scope: Scope) -> Trap | None:
        method, path = scope["method"], scope["path"]
        with self._lock:
            self.requests.append((method, path, scope.get("query_string", b"").decode()))
            self._lock.notify_all()
            for trap in self._traps:
                if trap.catches(method, path):
                    trap.hits += 1
                    return trap
        return None

    async def _answer_redirect(self, trap: Trap, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        if trap.options["page_body"]:
            body = json.dumps({"total": 1, "limit": 50, "skip": 0, "data": [self._conversation()]}).encode()
        headers = {"location": trap.options["location"], "content-type": "application/json"}
        await _respond(send, trap.options["status"], body, headers)

    async def _answer_html(self, trap: Trap, scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, LOGIN_PAGE, {"content-type": "text/html; charset=utf-8"})

    async def _answer_endless(self, trap: Trap, scope: Scope, receive: Receive, send: Send) -> None:
        if trap.options["delay_s"]:
            await asyncio.sleep(trap.options["delay_s"])  # the server's pace, not a test waiting
        data = [self._conversation() for _ in range(50)]
        body = {"total": trap.options["total"], "limit": 50, "skip": 0, "data": data}
        await _respond(send, 200, json.dumps(body).encode(), {"content-type": "application/json"})

    async def _answer_null_items(self, trap: Trap, scope: Scope, receive: Receive, send: Send) -> None:
        status, headers, raw = await _capture(self._app, scope, receive)
        page = json.loads(raw)
        if isinstance(page, dict) and isinstance(page.get("data"), list):
            page["data"] = [*trap.options["items"], *page["data"]]
        await _respond(send, status, json.dumps(page).encode(), headers)

    async def _answer_lying_total(self, trap: Trap, scope: Scope, receive: Receive, send: Send) -> None:
        status, headers, raw = await _capture(self._app, scope, receive)
        page = json.loads(raw)
        if isinstance(page, dict):
            page["total"] = trap.options["total"]
        await _respond(send, status, json.dumps(page).encode(), headers)

    async def _answer_slow(self, trap: Trap, scope: Scope, receive: Receive, send: Send) -> None:
        status, headers, raw = await _capture(self._app, scope, receive)
        headers.pop("content-length", None)  # chunked: the body trickles
        await send({"type": "http.response.start", "status": status, "headers": _encode(headers)})
        gone = asyncio.create_task(_disconnected(receive))
        loop = asyncio.get_running_loop()
        until = loop.time() + trap.options["seconds"]
        try:
            while loop.time() < until and not gone.done():
                # JSON allows leading whitespace: a client that waits it out gets the real answer.
                await send({"type": "http.response.body", "body": b" ", "more_body": True})
                await asyncio.sleep(0.02)  # the server's pace, not a test waiting
            await send({"type": "http.response.body", "body": raw})
        finally:
            gone.cancel()

    def _conversation(self) -> dict[str, Any]:
        """A conversation the simulator never had, stamped with the server's present."""
        now = self.sim.clock.now()
        return to_wire({
            "id": next(self._ids), "organization_id": self.sim.organization_id, "channel": "webchat",
            "status": "open", "created_at": now, "updated_at": now, "last_message_at": now,
            "unread_count": 0, "tags": [],
        })  # fmt: skip


async def _capture(app: ASGIApp, scope: Scope, receive: Receive) -> tuple[int, dict[str, str], bytes]:
    """Run `app` and keep its whole answer instead of sending it."""
    parts: list[bytes] = []
    start: dict[str, Any] = {}

    async def keep(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await app(scope, receive, keep)
    headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
    return int(start.get("status", 500)), headers, b"".join(parts)


async def _disconnected(receive: Receive) -> None:
    """Returns when the client hangs up (the request body was already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _respond(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    headers = {**headers, "content-length": str(len(body))}
    await send({"type": "http.response.start", "status": status, "headers": _encode(headers)})
    await send({"type": "http.response.body", "body": body})


def _encode(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers.items()]


@dataclass(frozen=True)
class HostileHandle(SimulatorHandle):
    """A `SimulatorHandle` whose URL is the hostile wrapper; `.api` sets the traps."""

    api: HostileApi = field(default=None)  # type: ignore[assignment]  # always given


@contextmanager
def served_hostile_api(
    clock: FakeClock, token: str, *, array_limit: int | None = None
) -> Iterator[HostileHandle]:
    """A simulator on `clock` behind `HostileApi`, served on a free loopback port."""
    sim = Simulator(clock=clock, token=token, array_limit=array_limit)
    hostile = HostileApi(sim)
    with serve(hostile) as server:
        yield HostileHandle(url=server.url, token=token, sim=sim, clock=clock, api=hostile)
