from __future__ import annotations

import httpx

from worker.health import HealthServer
from worker.metrics import POLLS


def test_health_readiness_and_metrics() -> None:
    server = HealthServer("127.0.0.1", 0).start()
    state = {"redis": True}
    server.add_check("redis", lambda: (state["redis"], "PING"))
    server.add_check("rules", lambda: (True, "3 rules"))
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/healthz").json() == {"status": "alive"}
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["rules"] == "ok: 3 rules"
        state["redis"] = False
        not_ready = httpx.get(f"{base}/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["checks"]["redis"].startswith("failing")
        POLLS.labels(kind="incremental").inc()
        assert "inboxpilot_polls_total" in httpx.get(f"{base}/metrics").text
    finally:
        server.stop()


def test_a_raising_check_is_not_ready() -> None:
    server = HealthServer("127.0.0.1", 0)

    def broken() -> tuple[bool, str]:
        raise ConnectionError("down")

    server.add_check("api", broken)
    ready, checks = server.readiness()
    assert not ready
    assert checks["api"] == "failing: check failed: ConnectionError"
