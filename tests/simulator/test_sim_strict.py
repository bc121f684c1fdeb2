"""The strict simulator serves only the contract's conversation fields."""

from __future__ import annotations

import httpx

from worker.clock import FakeClock
from worker.simulator.simulator import EXTENSION_FIELDS
from worker.simulator.testing import served_simulator

TOKEN = "strict-token"


def test_strict_mode_serves_no_extension_field_on_find_get_or_patch() -> None:
    with served_simulator(FakeClock(), TOKEN, strict=True) as handle:
        conv = handle.sim.new_conversation(channel="sms")["id"]
        handle.sim.reassign(conv, 7)
        with httpx.Client(base_url=handle.url, headers=handle.headers, timeout=10) as http:
            found = http.get("/conversations", params={"status": "open"}).json()["data"]
            got = http.get(f"/conversations/{conv}").json()
            patched = http.patch(f"/conversations/{conv}", json={"owner_id": 8}).json()
    for record in (*found, got, patched):
        assert not set(EXTENSION_FIELDS) & set(record), record
        assert record["owner_id"] in (7, 8) and "updated_at" in record
    # The store keeps them (the lenient simulator still serves them to other suites).
    assert handle.sim.conversation(conv)["assigned_at"] is not None


def test_lenient_mode_still_serves_them() -> None:
    with served_simulator(FakeClock(), TOKEN) as handle:
        conv = handle.sim.new_conversation(channel="sms")["id"]
        with httpx.Client(base_url=handle.url, headers=handle.headers, timeout=10) as http:
            got = http.get(f"/conversations/{conv}").json()
    assert set(EXTENSION_FIELDS) <= set(got)
