"""Logging set-up: structlog for our events, stdlib logging routed through it.

`configure_logging` is the one place logging is configured. Every line passes
through `redact_secrets`, so the API token and `Authorization` headers never
reach a log, whichever library emitted the line. A line below the level is
dropped first, before any redaction or rendering: the per-request debug lines
cost next to nothing when they are not wanted.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Hashable, Iterable, MutableMapping
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from worker.redact import mask_url

REDACTED = "[REDACTED]"
_SENSITIVE_KEYS = {"authorization", "api_token", "token", "password", "secret"}
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",;]+")

_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Remember a secret value so it is scrubbed from any log line that contains it."""
    if value and len(value) >= 4:
        _secrets.add(value)


def scrub(text: str) -> str:
    """Remove registered secrets, bearer tokens and credentials in URLs from a string."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return mask_url(_BEARER.sub(rf"\g<1>{REDACTED}", text))


def _scrub_value(key: str, value: Any) -> Any:
    if key.lower() in _SENSITIVE_KEYS:
        return REDACTED
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, MutableMapping):
        return {k: _scrub_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value("", v) for v in value]
    if isinstance(value, BaseException):
        return scrub(repr(value))
    return value


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets in every value, nested ones included."""
    return {key: _scrub_value(key, value) for key, value in event_dict.items()}


def _scrub_rendered(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # Tracebacks are rendered to text late in the chain; scrub them once rendered.
    for key in ("exception", "stack"):
        if isinstance(event_dict.get(key), str):
            event_dict[key] = scrub(event_dict[key])
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]


def configure_logging(
    level: str = "INFO",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: Any = None,
) -> None:
    """Configure structlog and stdlib logging once, at start-up."""
    for secret in secrets:
        register_secret(secret)
    stream = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _scrub_rendered,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO; keep it (and httpcore) quiet.
    for noisy in ("httpx", "httpcore", "uvicorn.access", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    structlog.configure(
        processors=[
            # First: a line below the level (the per-request debug lines) costs no redaction or rendering.
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


class Throttle:
    """Lets a log line through at most once per `interval_s` per key.

    A bad record the API serves on every tick would otherwise log every poll
    interval; one line per key and interval says the same. Keys are forgotten
    oldest first beyond `max_keys`, so a server inventing new bad records cannot
    grow memory. Thread-safe.
    """

    def __init__(self, interval_s: float, *, max_keys: int = 10_000) -> None:
        self.interval_s = interval_s
        self._max_keys = max_keys
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def allow(self, key: Hashable) -> int | None:
        """None to stay quiet; else how many lines were suppressed for `key` since the last one."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last.pop(key, None)
            self._last[key] = now  # re-inserted: newest last, so eviction drops the oldest
            while len(self._last) > self._max_keys:
                oldest = next(iter(self._last))
                del self._last[oldest]
                self._suppressed.pop(oldest, None)
            return self._suppressed.pop(key, 0)
