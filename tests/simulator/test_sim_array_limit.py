"""The simulator's emulation of qs's default `arrayLimit` (`array_limit=20`): a query array of
more than 20 items is Feathers' 400 BadRequest; 20 pass; the default takes any length."""

from __future__ import annotations

import httpx
import pytest

from worker.simulator.testing import SimulatorHandle


def _find(handle: SimulatorHandle, ids: range, key: str = "id[$in][]") -> httpx.Response:
    params = [(key, str(i)) for i in ids]
    return httpx.get(f"{handle.url}/conversations", params=params, headers=handle.headers)


@pytest.mark.qs_array_limit(20)
def test_more_than_20_items_is_a_feathers_bad_request(simulator: SimulatorHandle) -> None:
    simulator.sim.seed(30)
    assert _find(simulator, range(1, 21)).status_code == 200
    refused = _find(simulator, range(1, 22))
    assert refused.status_code == 400
    body = refused.json()
    assert (body["name"], body["code"], body["className"]) == ("BadRequest", 400, "bad-request")
    assert body["data"][0]["instancePath"] == "/id/$in" and body["data"][0]["message"] == "must be array"
    ors = [(f"$or[{i}][id]", str(i + 1)) for i in range(21)]
    response = httpx.get(f"{simulator.url}/conversations", params=ors, headers=simulator.headers)
    assert response.status_code == 400 and response.json()["data"][0]["instancePath"] == "/$or"
    assert simulator.sim.refused_arrays == 2


def test_the_default_simulator_takes_50(simulator: SimulatorHandle) -> None:
    simulator.sim.seed(60)
    answer = _find(simulator, range(1, 51))
    assert answer.status_code == 200 and answer.json()["total"] == 50
    assert simulator.sim.refused_arrays == 0
