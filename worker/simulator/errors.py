"""Feathers error bodies: `{name, message, code, className, data?, errors?}`.

Handlers raise a `FeathersError` subclass; the app turns it into the JSON body
and status Feathers' REST transport would answer with.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FeathersError(Exception):
    """An error the simulator answers with a Feathers error body."""

    code: ClassVar[int] = 500
    error_name: ClassVar[str] = "GeneralError"
    class_name: ClassVar[str] = "general-error"

    def __init__(
        self,
        message: str,
        *,
        data: dict[str, Any] | list[Any] | None = None,
        errors: dict[str, Any] | list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        self.errors = errors
        self.headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.error_name,
            "message": self.message,
            "code": self.code,
            "className": self.class_name,
        }
        if self.data is not None:
            body["data"] = self.data
        if self.errors is not None:
            body["errors"] = self.errors
        return body


class BadRequest(FeathersError):
    code, error_name, class_name = 400, "BadRequest", "bad-request"


class NotAuthenticated(FeathersError):
    code, error_name, class_name = 401, "NotAuthenticated", "not-authenticated"


class Forbidden(FeathersError):
    code, error_name, class_name = 403, "Forbidden", "forbidden"


class NotFound(FeathersError):
    code, error_name, class_name = 404, "NotFound", "not-found"


class MethodNotAllowed(FeathersError):
    code, error_name, class_name = 405, "MethodNotAllowed", "method-not-allowed"


class Conflict(FeathersError):
    code, error_name, class_name = 409, "Conflict", "conflict"


class Unprocessable(FeathersError):
    code, error_name, class_name = 422, "Unprocessable", "unprocessable"


class TooManyRequests(FeathersError):
    code, error_name, class_name = 429, "TooManyRequests", "too-many-requests"


class GeneralError(FeathersError):
    code, error_name, class_name = 500, "GeneralError", "general-error"


class Unavailable(FeathersError):
    code, error_name, class_name = 503, "Unavailable", "unavailable"


def not_found(service: str, record_id: object) -> NotFound:
    """The memory adapter's wording: `No record found for id '<id>'`."""
    return NotFound(f"No record found for id '{record_id}'", data={"service": service})
