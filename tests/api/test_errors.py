"""Mapping Feathers error answers to typed exceptions."""

from __future__ import annotations

import json

import pytest

from worker.api import errors
from worker.logs import register_secret


def body(name: str, message: str, code: int, **extra: object) -> bytes:
    return json.dumps({"name": name, "message": message, "code": code, **extra}).encode()


def test_feathers_body_fields_are_kept() -> None:
    exc = errors.from_response(
        422,
        body("Unprocessable", "outside the 24h window", 422, data={"window": "24h"}),
        method="POST",
        path="/x",
    )
    assert isinstance(exc, errors.Unprocessable)
    assert (exc.status, exc.name, exc.message, exc.data) == (
        422,
        "Unprocessable",
        "outside the 24h window",
        {"window": "24h"},
    )
    assert not exc.retryable and not exc.maybe_applied
    assert str(exc) == "POST /x failed: 422 Unprocessable: outside the 24h window"


def test_errors_list_is_used_when_there_is_no_data() -> None:
    exc = errors.from_response(400, body("BadRequest", "bad", 400, errors={"action": "required"}))
    assert exc.data == {"action": "required"}


def test_5xx_on_a_write_may_have_applied() -> None:
    exc = errors.from_response(500, body("GeneralError", "late failure", 500), method="PATCH", path="/c/1")
    assert exc.maybe_applied and exc.retryable
    assert "may have been applied" in str(exc)
    read = errors.from_response(500, b"", method="GET", path="/c/1")
    assert not read.maybe_applied
    assert read.message == "HTTP 500"


def test_unknown_statuses() -> None:
    assert type(errors.from_response(507, b"")) is errors.GeneralError
    assert errors.from_response(507, b"").retryable
    assert type(errors.from_response(405, b"")) is errors.ApiError


def test_rate_limited_carries_retry_after() -> None:
    exc = errors.from_response(429, body("TooManyRequests", "slow", 429), retry_after_s=3.0)
    assert isinstance(exc, errors.RateLimited)
    assert exc.retry_after_s == 3.0 and exc.retryable


@pytest.mark.parametrize("raw", [b"<html>oops</html>", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_non_feathers_bodies_do_not_crash(raw: bytes) -> None:
    exc = errors.from_response(400, raw)
    assert isinstance(exc, errors.BadRequest)
    assert exc.message


def test_long_html_is_cut() -> None:
    exc = errors.from_response(502, b"<p>" + b"x" * 5000 + b"</p>")
    assert len(exc.message) < 300


def test_registered_secret_is_scrubbed_from_messages() -> None:
    register_secret("s3cr3t-value-xyz")
    exc = errors.from_response(401, body("NotAuthenticated", "bad token s3cr3t-value-xyz", 401))
    assert "s3cr3t-value-xyz" not in str(exc)
    assert "s3cr3t-value-xyz" not in repr(exc)
