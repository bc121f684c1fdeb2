"""Assertions shared by the simulator tests."""

from __future__ import annotations

from typing import Any

import httpx

FEATHERS_KEYS = {"name", "message", "code", "className"}


def assert_feathers_error(response: httpx.Response, code: int, name: str) -> dict[str, Any]:
    """The response is a Feathers error body with this status and name; returns the body."""
    body: dict[str, Any] = response.json()
    assert response.status_code == code, body
    assert body.keys() >= FEATHERS_KEYS
    assert (body["code"], body["name"]) == (code, name)
    return body
