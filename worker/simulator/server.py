"""Serve an ASGI app with uvicorn in a daemon thread (tests, demos, the sandbox)."""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from worker.simulator.app import ConnectionDropped

STARTUP_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
_POLL_S = 0.005


class _HideInjectedDrops(logging.Filter):
    """A deliberately dropped connection is not a server bug: keep it out of the error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionDropped)


logging.getLogger("uvicorn.error").addFilter(_HideInjectedDrops())


class RunningServer:
    """A started uvicorn server; a context manager that stops it on exit."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT_S)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning") -> RunningServer:
    """Start uvicorn on (host, port) in a daemon thread; return once it accepts connections.

    `port=0` picks a free port; read it back from `.port`.
    """
    # No uvicorn `Date`: the simulator sends its own, from its (maybe fake) clock.
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="off", access_log=False, date_header=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{host}:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server on {host}:{port} did not start (is the port free?)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"the server on {host}:{port} did not start within {STARTUP_TIMEOUT_S} s")
        thread.join(_POLL_S)  # returns early if the thread dies
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    return RunningServer(server, thread, host, bound_port)
