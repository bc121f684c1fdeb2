"""HTTP: Starlette routes onto the services, with the cross-cutting steps in order.

API request pipeline: bearer auth -> rate limit (429) -> latency -> injected
500 -> route -> idempotency replay -> apply (under the store lock) ->
commit-then-fail (503 or a dropped connection) -> audit (mutating calls).
`/__admin/*` uses the same bearer auth but no faults and no audit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.simulator.audit import Outcome, StoredResponse
from worker.simulator.errors import (
    BadRequest,
    FeathersError,
    Forbidden,
    GeneralError,
    MethodNotAllowed,
    NotAuthenticated,
    NotFound,
    TooManyRequests,
    Unavailable,
)
from worker.simulator.faults import FaultConfig
from worker.simulator.query import ArrayTooLong, parse_datetime, parse_query_string
from worker.simulator.services import Call, upload_signature
from worker.simulator.store import to_wire

if TYPE_CHECKING:
    from worker.simulator.simulator import Simulator

MUTATING = frozenset({"POST", "PATCH", "DELETE"})
OPERATIONS: dict[tuple[str, bool], str] = {
    ("GET", False): "find",
    ("GET", True): "get",
    ("POST", False): "create",
    ("PATCH", True): "patch",
    ("DELETE", True): "remove",
}
ALL_METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]


class ConnectionDropped(httpx.RemoteProtocolError):
    """Raised after the response started, so the server closes the connection mid-response.

    Over a socket uvicorn closes the connection (the client sees a transport
    error); in-process through `httpx.ASGITransport` the client sees this
    exception, which is an `httpx.TransportError` too.
    """

    def __init__(self) -> None:
        super().__init__("simulator dropped the connection after applying the change")


class DroppedResponse(Response):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send(start | {"headers": [(b"content-length", b"64")]})
        raise ConnectionDropped


def error_response(exc: FeathersError) -> JSONResponse:
    return JSONResponse(exc.to_body(), status_code=exc.code, headers=exc.headers)


@dataclass
class _Trace:
    """What happened to one request, for the audit log."""

    outcome: Outcome = "rejected"
    fault: str | None = None


def _authenticate(sim: Simulator, request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise NotAuthenticated("Not authenticated: missing Authorization header")
    if scheme.lower() != "bearer" or not sim.check_token(token.strip()):
        raise NotAuthenticated("Not authenticated: invalid bearer token")
    return token.strip()


def _json_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("Invalid JSON body") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object")
    return body


def _audit_body(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        return raw.decode("utf-8", "replace")


# --- the API ----------------------------------------------------------------------------


async def api(request: Request) -> Response:
    sim: Simulator = request.app.state.simulator
    raw = await request.body()
    trace = _Trace()
    try:
        response = await _pipeline(sim, request, raw, trace)
    except FeathersError as exc:
        response = error_response(exc)
    if request.method in MUTATING:
        sim.audit.record(
            time=sim.clock.now(),
            method=request.method,
            path=request.url.path,
            body=_audit_body(raw),
            status=response.status_code,
            idempotency_key=request.headers.get("idempotency-key"),
            outcome=trace.outcome,
            fault=trace.fault,
        )
    return response


async def _pipeline(sim: Simulator, request: Request, raw: bytes, trace: _Trace) -> Response:
    token = _authenticate(sim, request)
    targeted = sim.faults.targets(request.url.path)
    if targeted:
        await _pre_faults(sim, token, trace)
    operation, call = _route(request, raw)
    service = sim.services[request.path_params["service"]]
    key = request.headers.get("idempotency-key") if request.method in ("POST", "PATCH") else None
    scope = request.url.path
    with sim.lock:
        stored = sim.idempotency.get(scope, key) if key else None
        if stored is not None:
            trace.outcome = "replay"
            return JSONResponse(stored.body, stored.status, headers={"Idempotent-Replayed": "true"})
        body = sim.served(request.path_params["service"], to_wire(getattr(service, operation)(call)))
        status = 201 if operation == "create" else 200
        if request.method in MUTATING:
            trace.outcome = "applied"
        if key:
            sim.idempotency.put(scope, key, StoredResponse(status, body))
    if targeted and request.method in MUTATING:
        _post_faults(sim, trace, request.url.path)
        if trace.fault == "commit_then_fail_drop":
            return DroppedResponse(status_code=status)
    return JSONResponse(body, status)


async def _pre_faults(sim: Simulator, token: str, trace: _Trace) -> None:
    retry_after = sim.faults.take_token(token)
    if retry_after is not None:
        trace.outcome, trace.fault = "fault", "rate_limited"
        raise TooManyRequests(
            "Too many requests: rate limit exceeded",
            data={"retry_after_s": retry_after},
            headers={"Retry-After": str(retry_after)},
        )
    latency = sim.faults.note_latency()
    if latency > 0:
        await asyncio.sleep(latency)
    if sim.faults.roll_error():
        trace.outcome, trace.fault = "fault", "error"
        raise GeneralError("Injected fault: internal error, nothing was applied")


def _post_faults(sim: Simulator, trace: _Trace, path: str) -> None:
    kind = sim.faults.roll_commit_then_fail(path)
    if kind is None:
        return
    trace.fault = f"commit_then_fail_{kind}"
    if kind == "503":
        raise Unavailable("Injected fault: service unavailable (the change may have been applied)")


def _route(request: Request, raw: bytes) -> tuple[str, Call]:
    sim: Simulator = request.app.state.simulator
    name = request.path_params["service"]
    if name not in sim.services:
        raise NotFound(f"Page not found: {request.url.path}")
    record_id = request.path_params.get("id")
    operation = OPERATIONS.get((request.method, record_id is not None))
    if operation is None:
        raise MethodNotAllowed(f"Method {request.method} not allowed on {request.url.path}")
    body = _json_body(raw) if request.method in ("POST", "PATCH") else {}
    try:
        query = parse_query_string(request.url.query, array_limit=sim.array_limit)
    except ArrayTooLong:
        sim.refused_arrays += 1
        raise
    return operation, Call(id=record_id, query=query, body=body, base_url=str(request.base_url))


async def not_found(request: Request) -> Response:
    return error_response(NotFound(f"Page not found: {request.url.path}"))


# --- uploads (the signed URL points here) -------------------------------------------------------


async def upload(request: Request) -> Response:
    """S3's side of a signed upload: audited like an API write (body: size and content hash),
    and open to the same faults, so a chaos run can lose the answer to a stored upload."""
    sim: Simulator = request.app.state.simulator
    key = request.path_params["key"]
    data = await request.body()
    trace = _Trace()
    response = _store_upload(sim, request, key, data, trace)
    sim.audit.record(
        time=sim.clock.now(),
        method="PUT",
        path=request.url.path,
        body={"size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        status=response.status_code,
        idempotency_key=None,
        outcome=trace.outcome,
        fault=trace.fault,
    )
    return response


def _store_upload(sim: Simulator, request: Request, key: str, data: bytes, trace: _Trace) -> Response:
    if request.query_params.get("X-Amz-Signature", "") != upload_signature(key):
        return error_response(Forbidden("Invalid or missing upload signature"))
    targeted = sim.faults.targets(request.url.path)
    if targeted and sim.faults.roll_error():
        trace.outcome, trace.fault = "fault", "error"
        return error_response(GeneralError("Injected fault: internal error, nothing was stored"))
    with sim.lock:
        sim.store.uploads[key] = len(data)
    trace.outcome = "applied"
    if targeted:
        try:
            _post_faults(sim, trace, request.url.path)
        except FeathersError as exc:
            return error_response(exc)
        if trace.fault == "commit_then_fail_drop":
            return DroppedResponse(status_code=200)
    return JSONResponse({"s3_key": key, "size": len(data)})


# --- admin ----------------------------------------------------------------------------------

AdminHandler = Callable[["Simulator", Request, dict[str, Any]], Any]
ADMIN: dict[tuple[str, str], AdminHandler] = {}


def admin(method: str, name: str) -> Callable[[AdminHandler], AdminHandler]:
    def register(handler: AdminHandler) -> AdminHandler:
        if (method, name) in ADMIN:
            raise ValueError(f"duplicate admin route {method} {name}")
        ADMIN[(method, name)] = handler
        return handler

    return register


async def admin_endpoint(request: Request) -> Response:
    sim: Simulator = request.app.state.simulator
    try:
        _authenticate(sim, request)
        handler = ADMIN.get((request.method, request.path_params["name"]))
        if handler is None:
            raise NotFound(f"Page not found: {request.url.path}")
        body = _json_body(await request.body()) if request.method == "POST" else {}
        result = handler(sim, request, body)
    except FeathersError as exc:
        return error_response(exc)
    except (TypeError, ValueError, KeyError) as exc:
        return error_response(BadRequest(f"Invalid admin request: {exc}"))
    return JSONResponse(to_wire(result))


@admin("POST", "inbound")
def _admin_inbound(sim: Simulator, request: Request, body: dict[str, Any]) -> Any:
    return sim.customer_message(int(body["conversation_id"]), body.get("message_text", "Hello?"))


@admin("POST", "conversations")
def _admin_new_conversation(sim: Simulator, request: Request, body: dict[str, Any]) -> Any:
    fields = {"text": body.get("message_text", "Hi, I need help")}
    names = ("channel", "contact_id", "contact", "pipeline_id", "pipeline_stage_id", "tags")
    fields |= {name: body[name] for name in names if name in body}
    return sim.new_conversation(**fields)


@admin("POST", "team-reply")
def _admin_team_reply(sim: Simulator, request: Request, body: dict[str, Any]) -> Any:
    options = {name: body[name] for name in ("user_id", "message_type", "template_name") if name in body}
    return sim.team_reply(int(body["conversation_id"]), body.get("message_text", "On it."), **options)


@admin("POST", "reassign")
def _admin_reassign(sim: Simulator, request: Request, body: dict[str, Any]) -> Any:
    return sim.reassign(int(body["conversation_id"]), body.get("owner_id"))


@admin("POST", "change")
def _admin_change(sim: Simulator, request: Request, body: dict[str, Any]) -> Any:
    return sim.human_change(int(body["conversation_id"]), dict(body["changes"]))


@admin("GET", "clock")
def _admin_get_clock(sim: Simulator, request: Request, body: dict[str, Any]) -> Any:
    return {"now": sim.clock.now()}


@admin("POST", "clock")
def _admin_move_clock(sim: Simulator, request: Request, body: dict[str, Any]) -> Any:
    if "set" in body:
        return {"now": sim.set_clock(parse_datetime(str(body["set"])))}
    return {"now": sim.advance_clock(float(body.get("advance_s", 0)))}


@admin("GET", "audit")
def _admin_audit(sim: Simulator, request: Request, body: dict[str, Any]) -> Any:
    since = int(request.query_params.get("since", "0"))
    return {"entries": [entry.to_dict() for entry in sim.audit_log(since)]}


@admin("GET", "faults")
def _admin_get_faults(sim: Simulator, request: Request, body: dict[str, Any]) -> Any:
    return {"config": sim.faults.config.to_dict(), "counts": sim.fault_counts()}


@admin("POST", "faults")
def _admin_set_faults(sim: Simulator, request: Request, body: dict[str, Any]) -> Any:
    seed = body.pop("seed", None)
    for name in ("paths", "commit_then_fail_first"):
        if name in body:
            body[name] = tuple(body[name])
    sim.set_faults(FaultConfig(**body), seed=seed)
    return _admin_get_faults(sim, request, {})


@admin("POST", "reset")
def _admin_reset(sim: Simulator, request: Request, body: dict[str, Any]) -> Any:
    sim.reset()
    if body.get("n"):
        sim.seed(int(body["n"]), seed=int(body.get("seed", 0)))
    return {"conversations": len(sim.store.conversations)}


@admin("POST", "seed")
def _admin_seed(sim: Simulator, request: Request, body: dict[str, Any]) -> Any:
    sim.seed(int(body.get("n", 100)), seed=int(body.get("seed", 0)))
    return {"conversations": len(sim.store.conversations)}


@admin("GET", "state")
def _admin_state(sim: Simulator, request: Request, body: dict[str, Any]) -> Any:
    with sim.lock:
        counts = {collection.name: len(collection) for collection in sim.store.all_collections()}
    now: datetime = sim.clock.now()
    return {
        "now": now,
        "organization_id": sim.organization_id,
        "counts": counts,
        "faults": sim.fault_counts(),
    }


class ServerDate:
    """`Date` from the simulator's clock, as a real server sends its own present.

    A fake clock moves it: the worker caps its poll watermark by this header.
    """

    def __init__(self, app: ASGIApp, sim: Simulator) -> None:
        self.app = app
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def dated(message: Message) -> None:
            if message["type"] == "http.response.start":
                stamp = format_datetime(self.sim.clock.now(), usegmt=True).encode()
                message = {**message, "headers": [*message.get("headers", []), (b"date", stamp)]}
            await send(message)

        await self.app(scope, receive, dated)


def build_app(sim: Simulator) -> Starlette:
    endpoint: Callable[[Request], Awaitable[Response]] = api
    app = Starlette(
        routes=[
            Route("/__admin/{name}", admin_endpoint, methods=["GET", "POST"]),
            Route("/__uploads/{key:path}", upload, methods=["PUT"]),
            Route("/{service}", endpoint, methods=ALL_METHODS),
            Route("/{service}/{id}", endpoint, methods=ALL_METHODS),
            Route("/{rest:path}", not_found, methods=ALL_METHODS),
        ],
        middleware=[Middleware(ServerDate, sim=sim)],
    )
    app.state.simulator = sim
    return app
