"""Typed errors of the Conversations API, mapped from Feathers error bodies in one place.

An error never holds request headers or the token: it keeps the method, the
path, the status and the server's name/message/data, and its message is
scrubbed of registered secrets. `retryable` says the failure is transient;
`maybe_applied` says a write may have taken effect anyway (a timeout after the
request was sent, a 5xx after the server committed): the caller must read back
before sending it again.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from worker.logs import scrub

_MAX_TEXT_CHARS = 200


class ApiError(Exception):
    """Base of every error the API client raises."""

    status_code: ClassVar[int | None] = None
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        name: str | None = None,
        data: Any = None,
        method: str = "",
        path: str = "",
        maybe_applied: bool = False,
        retryable: bool | None = None,
    ) -> None:
        self.status = status if status is not None else self.status_code
        self.name = name or type(self).__name__
        self.message = scrub(message)
        self.data = data
        self.method = method
        self.path = path
        self.maybe_applied = maybe_applied
        self.retryable = self.default_retryable if retryable is None else retryable
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = f"{self.method} {self.path}".strip() or "request"
        status = f"{self.status} " if self.status is not None else ""
        outcome = " (outcome unknown: it may have been applied)" if self.maybe_applied else ""
        return f"{where} failed: {status}{self.name}: {self.message}{outcome}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, name={self.name!r}, "
            f"message={self.message!r}, method={self.method!r}, path={self.path!r}, "
            f"maybe_applied={self.maybe_applied!r})"
        )


class BadRequest(ApiError):
    status_code = 400


class NotAuthenticated(ApiError):
    status_code = 401


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class Unprocessable(ApiError):
    status_code = 422


class RateLimited(ApiError):
    """429: the server asks us to wait `retry_after_s` (None when it did not say)."""

    status_code = 429
    default_retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kwargs: Any) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, **kwargs)


class GeneralError(ApiError):
    status_code = 500
    default_retryable = True


class Unavailable(ApiError):
    status_code = 503
    default_retryable = True


class TransportError(ApiError):
    """No HTTP answer: connection refused or reset, or a timeout."""

    default_retryable = True


class MalformedResponse(ApiError):
    """An answer that is not JSON or not of the expected shape."""


class Redirected(ApiError):
    """A 3xx: never followed, never taken as data (a wrong API URL, a proxy, a login page).

    A redirect followed with the bearer token could hand it to another host, and a
    body sent along with a redirect is not the API's answer. `location` is the
    `Location` header as sent ("" when there was none).
    """

    def __init__(self, message: str, *, location: str = "", **kwargs: Any) -> None:
        self.location = scrub(location)
        super().__init__(message, **kwargs)


def redirected(status: int, location: str | None, *, method: str, path: str) -> Redirected:
    """The error for a 3xx answer; a write that was redirected may have been applied."""
    target = location or "(no Location header)"
    return Redirected(
        f"the API answered with a redirect to {target}; redirects are never followed "
        "(check the API URL: scheme, host, path, or a proxy in front)",
        status=status,
        location=location or "",
        method=method,
        path=path,
        maybe_applied=method.upper() not in ("GET", "HEAD"),
    )


# Status -> class; statuses not listed fall back by class (see `error_class_for`).
ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    cls.status_code: cls
    for cls in (
        BadRequest,
        NotAuthenticated,
        Forbidden,
        NotFound,
        Conflict,
        Unprocessable,
        RateLimited,
        GeneralError,
        Unavailable,
    )
    if cls.status_code is not None
}


def error_class_for(status: int) -> type[ApiError]:
    """The exception class for an HTTP status; unknown 5xx are GeneralError."""
    if status in ERRORS_BY_STATUS:
        return ERRORS_BY_STATUS[status]
    return GeneralError if status >= 500 else ApiError


def from_response(
    status: int,
    body: bytes,
    *,
    method: str = "",
    path: str = "",
    retry_after_s: float | None = None,
) -> ApiError:
    """Map an error answer (Feathers body or not) to a typed exception."""
    cls = error_class_for(status)
    name, message, data = _parse_feathers_body(body)
    is_write = method.upper() not in ("GET", "HEAD", "")
    kwargs: dict[str, Any] = {
        "status": status,
        "name": name or cls.__name__,
        "data": data,
        "method": method,
        "path": path,
        # A 5xx on a write may come after the server committed (commit-then-fail).
        "maybe_applied": is_write and status >= 500,
    }
    if cls is RateLimited:
        kwargs["retry_after_s"] = retry_after_s
    elif status >= 500:
        kwargs["retryable"] = True
    return cls(message or f"HTTP {status}", **kwargs)


def _parse_feathers_body(body: bytes) -> tuple[str | None, str | None, Any]:
    """(name, message, data) from a Feathers error body; a non-JSON body gives a text snippet."""
    text = body.decode("utf-8", errors="replace")
    try:
        payload = json.loads(text) if text.strip() else None
    except ValueError:
        return None, _snippet(text), None
    if not isinstance(payload, dict):
        return None, _snippet(text) if text.strip() else None, None
    name = payload.get("name")
    message = payload.get("message")
    data = payload.get("data", payload.get("errors"))
    return (
        name if isinstance(name, str) else None,
        message if isinstance(message, str) else None,
        data,
    )


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_TEXT_CHARS else flat[:_MAX_TEXT_CHARS] + "..."
