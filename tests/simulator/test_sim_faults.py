"""Fault injection: seeded errors, commit-then-fail, 429 with Retry-After, latency, targeting."""

from __future__ import annotations

import httpx
import pytest

from worker.simulator.testing import SimulatorHandle

from .helpers import assert_feathers_error

PATCH = "/conversations/1"


@pytest.fixture
def one(simulator: SimulatorHandle) -> SimulatorHandle:
    simulator.sim.new_conversation()
    return simulator


def test_error_rate_fails_before_applying(one: SimulatorHandle, client: httpx.Client) -> None:
    one.sim.set_faults(error_rate=1.0)
    assert_feathers_error(client.patch(PATCH, json={"owner_id": 101}), 500, "GeneralError")
    assert one.sim.conversation(1)["owner_id"] is None
    entry = one.sim.audit_log()[-1]
    assert (entry.outcome, entry.fault, entry.applied) == ("fault", "error", False)
    assert one.sim.fault_counts() == {"error": 1}


def test_commit_then_fail_503_applies(one: SimulatorHandle, client: httpx.Client) -> None:
    one.sim.set_faults(commit_then_fail_rate=1.0, commit_then_fail_mode="503")
    assert_feathers_error(client.patch(PATCH, json={"owner_id": 101}), 503, "Unavailable")
    assert one.sim.conversation(1)["owner_id"] == 101
    entry = one.sim.audit_log()[-1]
    assert (entry.applied, entry.fault, entry.status) == (True, "commit_then_fail_503", 503)


def test_the_first_write_under_a_prefix_can_be_made_to_lose_its_answer(
    one: SimulatorHandle, client: httpx.Client
) -> None:
    one.sim.set_faults(commit_then_fail_first=["/conversations/", "/__uploads/"], commit_then_fail_mode="503")
    assert_feathers_error(client.patch(PATCH, json={"owner_id": 101}), 503, "Unavailable")
    assert client.patch(PATCH, json={"owner_id": 102}).status_code == 200  # once per prefix only
    signed = client.post("/s3-url-signing", json={"file_name": "a.pdf", "organization_id": 1}).json()
    assert httpx.put(signed["url"], content=b"%PDF-").status_code == 503
    assert one.sim.store.uploads[signed["s3_key"]] == 5  # stored all the same
    assert httpx.put(signed["url"], content=b"%PDF-").status_code == 200
    faulted = [(e.method, e.applied, e.fault) for e in one.sim.audit_log() if e.fault]
    assert faulted == [("PATCH", True, "commit_then_fail_503"), ("PUT", True, "commit_then_fail_503")]


def test_commit_then_fail_drop_is_a_transport_error(one: SimulatorHandle, client: httpx.Client) -> None:
    one.sim.set_faults(commit_then_fail_rate=1.0, commit_then_fail_mode="drop")
    with pytest.raises(httpx.TransportError):
        client.patch(PATCH, json={"owner_id": 101}, headers={"Idempotency-Key": "d-1"})
    assert one.sim.conversation(1)["owner_id"] == 101
    one.sim.set_faults(commit_then_fail_rate=0.0)
    replay = client.patch(PATCH, json={"owner_id": 101}, headers={"Idempotency-Key": "d-1"})
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert one.sim.fault_counts() == {"commit_then_fail_drop": 1}


def test_commit_then_fail_spares_reads(one: SimulatorHandle, client: httpx.Client) -> None:
    one.sim.set_faults(commit_then_fail_rate=1.0)
    assert client.get(PATCH).status_code == 200


def test_rate_limit_answers_429_with_retry_after(one: SimulatorHandle, client: httpx.Client) -> None:
    one.sim.set_faults(rate_limit_per_s=0.5, rate_burst=2)
    assert [client.get(PATCH).status_code for _ in range(2)] == [200, 200]
    limited = client.get(PATCH)
    assert_feathers_error(limited, 429, "TooManyRequests")
    assert limited.headers["Retry-After"] == "2"
    one.clock.advance(2)  # the bucket refills on the simulator's clock
    assert client.get(PATCH).status_code == 200
    assert one.sim.fault_counts() == {"rate_limited": 1}


def test_latency_is_counted(one: SimulatorHandle, client: httpx.Client) -> None:
    one.sim.set_faults(latency_s=0.001)
    assert client.get(PATCH).status_code == 200
    assert one.sim.fault_counts() == {"latency": 1}


def test_path_targeting(one: SimulatorHandle, client: httpx.Client) -> None:
    one.sim.set_faults(error_rate=1.0, paths=["/conversations-bulk-actions"])
    assert client.get(PATCH).status_code == 200
    bulk = client.post("/conversations-bulk-actions", json={"action": "unassign", "conversation_ids": [1]})
    assert bulk.status_code == 500


def test_same_seed_same_faults(one: SimulatorHandle, client: httpx.Client) -> None:
    def run() -> list[int]:
        one.sim.set_faults(error_rate=0.5, seed=42)
        return [client.get(PATCH).status_code for _ in range(30)]

    first, second = run(), run()
    assert first == second and {200, 500} == set(first)


def test_faults_over_http(one: SimulatorHandle, client: httpx.Client) -> None:
    set_response = client.post("/__admin/faults", json={"error_rate": 1.0, "seed": 1})
    assert set_response.json()["config"]["error_rate"] == 1.0
    client.get(PATCH)
    assert client.get("/__admin/faults").json()["counts"] == {"error": 1}
    bad = client.post("/__admin/faults", json={"error_rate": 2})
    assert_feathers_error(bad, 400, "BadRequest")
    assert client.get("/__admin/state").status_code == 200  # admin calls never get faults
