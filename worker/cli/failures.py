"""No traceback reaches a user: every command's failures become one clear line and an exit code.

Every command callback is wrapped by `guarded` (see `worker.cli`), so an API that
refuses the token, a Redis that is down or a port in use ends the command with a
line that says what failed and what to check, and a documented exit code
(`EXIT_CODES`, listed in the README). An unexpected error is one line too; its
traceback is shown only with INBOXPILOT_LOG_LEVEL=DEBUG.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from worker.api.errors import ApiError
    from worker.config import Settings

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_API = 3
EXIT_REDIS = 4
EXIT_PORT = 5
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_PROBLEMS: "the command ran and found problems (rule errors, an unknown dead-letter id, ...) "
    "or failed unexpectedly (one line; INBOXPILOT_LOG_LEVEL=DEBUG shows the traceback)",
    EXIT_USAGE: "wrong usage or settings: an unknown option, a bad value, a missing token, invalid TOML",
    EXIT_API: "the API could not be used: unreachable, timed out, not the API (an HTML page, a "
    "redirect), refused the token (401/403), rate-limited (429) or failing (5xx)",
    EXIT_REDIS: "Redis or the message broker could not be reached",
    EXIT_PORT: "a port to listen on is in use or not allowed",
}
F = TypeVar("F", bound=Callable[..., Any])
_settings: Settings | None = None


class Failure(Exception):
    """A failure a command reports itself: `lines` to stderr, then exit `code`."""

    def __init__(self, code: int, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.code = code
        self.lines = lines


def remember(settings: Settings) -> None:
    """The settings in force, so a failure can name the URL it was about (masked)."""
    global _settings
    _settings = settings


def guarded(func: F) -> F:
    """`func` with every exception turned into `inboxpilot: <line>` on stderr and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if _is_cli_signal(exc):
                raise  # typer's own exits and usage errors print themselves
            failure = describe(exc)
            for line in failure.lines:
                typer.echo(f"inboxpilot: {line}", err=True)
            if failure.code == EXIT_PROBLEMS and not isinstance(exc, Failure) and _debug():
                traceback.print_exc(file=sys.stderr)
            raise typer.Exit(failure.code) from None

    wrapper.guarded = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def describe(exc: BaseException) -> Failure:
    """The line and exit code for `exc`."""
    from worker.api.errors import ApiError
    from worker.logs import scrub

    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, ApiError):
        return Failure(EXIT_API, scrub(api_line(exc)))
    if _is_from(exc, "redis", "dramatiq", "pika", "fakeredis"):
        return Failure(EXIT_REDIS, scrub(_redis_line(exc)))
    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
        return Failure(EXIT_PORT, f"cannot listen: {exc.strerror or exc}")
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return Failure(EXIT_PROBLEMS, scrub(f"{exc.strerror or exc}{where}"))
    hint = "" if _debug() else " (INBOXPILOT_LOG_LEVEL=DEBUG shows the traceback)"
    return Failure(EXIT_PROBLEMS, scrub(f"unexpected error: {type(exc).__name__}: {exc}{hint}"))


def api_line(exc: ApiError) -> str:
    """What went wrong with the API, and what to check."""
    from worker.api import errors

    api = f"the API at {_setting('api_url')}"
    if isinstance(exc, errors.NotAuthenticated):
        return f"{api} refused the token (401 {exc.message}); check INBOXPILOT_API_TOKEN"
    if isinstance(exc, errors.Forbidden):
        return (
            f"{api} refused access (403 {exc.message}); check that the token may act for "
            f"INBOXPILOT_ORGANIZATION_ID={_setting('organization_id')}"
        )
    if isinstance(exc, errors.RateLimited):
        after = f", retry after {exc.retry_after_s:g} s" if exc.retry_after_s is not None else ""
        return f"{api} is rate-limiting this token (429{after}); try again later"
    if isinstance(exc, errors.TransportError):
        return f"cannot reach {api}: {exc.message}; check INBOXPILOT_API_URL and that the API is up"
    if isinstance(exc, errors.MalformedResponse | errors.Redirected | errors.NotFound):
        return (
            f"{api} did not answer like the Conversations API ({exc}); check INBOXPILOT_API_URL "
            "(a wrong path, a proxy or a login page?)"
        )
    return f"{api} failed: {exc}"


def _redis_line(exc: BaseException) -> str:
    detail = str(exc).strip().rstrip(".") or type(exc).__name__
    if _is_from(exc, "redis", "fakeredis"):
        url = _setting("redis_url") or "(embedded)"
        return f"cannot use Redis at {url}: {detail}; check INBOXPILOT_REDIS_URL and that Redis is up"
    url = _setting("broker_url") or _setting("redis_url")
    return f"cannot use the message broker at {url}: {detail}; check INBOXPILOT_BROKER_URL"


def _setting(name: str) -> str:
    if _settings is None:
        return f"INBOXPILOT_{name.upper()}"
    return str(_settings.public_dict()[name])


def _is_from(exc: BaseException, *packages: str) -> bool:
    return any(cls.__module__.split(".")[0] in packages for cls in type(exc).__mro__)


def _is_cli_signal(exc: BaseException) -> bool:
    """typer.Exit / Abort and click's usage errors (typer may vendor click: match by name)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, typer.Exit | typer.Abort) or "ClickException" in names


def _debug() -> bool:
    return os.environ.get("INBOXPILOT_LOG_LEVEL", "").upper() == "DEBUG"
