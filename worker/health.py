"""A small HTTP server per process: `/healthz` (alive), `/readyz` (ready to work),
`/metrics` (Prometheus). Readiness is a set of named checks registered by the
role that runs (Redis reachable, API reachable, rules loaded, leader or standby)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from worker.logs import get_logger, scrub
from worker.metrics import REGISTRY

ReadinessCheck = Callable[[], tuple[bool, str]]
log = get_logger(__name__)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes hit these endpoints every few seconds; do not log each one."""


class HealthServer:
    """Serves health, readiness and metrics on `port` (0 = pick a free one)."""

    def __init__(self, host: str = "0.0.0.0", port: int = 0) -> None:
        self._checks: dict[str, ReadinessCheck] = {}
        self._metrics_app = make_wsgi_app(REGISTRY)
        self._server: WSGIServer = make_server(host, port, self._app, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        self._checks[name] = check

    def readiness(self) -> tuple[bool, dict[str, str]]:
        results: dict[str, str] = {}
        ready = True
        for name, check in self._checks.items():
            try:
                ok, detail = check()
            except Exception as exc:  # a failing check means "not ready", never a crash
                ok, detail = False, f"check failed: {type(exc).__name__}"
            ready = ready and ok
            # Details quote errors, which may quote a URL with its password.
            results[name] = ("ok: " if ok else "failing: ") + scrub(detail)
        return ready, results

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("health_server_started", port=self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return _json(start_response, 200, {"status": "alive"})
        if path == "/readyz":
            ready, checks = self.readiness()
            return _json(start_response, 200 if ready else 503, {"ready": ready, "checks": checks})
        return _json(start_response, 404, {"error": "not found"})


def _json(start_response: Callable[..., Any], status: int, body: dict[str, Any]) -> list[bytes]:
    reasons = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}
    payload = json.dumps(body).encode()
    start_response(
        f"{status} {reasons[status]}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
    )
    return [payload]
