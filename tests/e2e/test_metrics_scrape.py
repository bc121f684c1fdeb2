"""Metrics as an operator sees them: run the loop (poll, workers, timers), scrape
/metrics from the health server, and check each family of the issue moved, with
low-cardinality labels only."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e._app_helpers import app_on, leader_loop, tick_and_drain
from tests.e2e._exec_helpers import flush_redis
from worker.api.client import ApiClient
from worker.clock import FakeClock
from worker.metrics import REGISTRY, observe_api_backoff, observe_api_response
from worker.simulator.testing import SimulatorHandle

# Every label name a metric may carry. A conversation id, a firing key or a URL
# as a label would make one series per conversation: never.
ALLOWED_LABELS = {"kind", "rule", "outcome", "action", "service", "method", "status", "result", "actor", "le"}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_loop_run_moves_every_metric_family(
    simulator: SimulatorHandle, redis_url: str, tmp_path: Path
) -> None:
    flush_redis(redis_url)
    before = {
        "polls": value("inboxpilot_polls_total", kind="incremental"),
        "evaluated": value("inboxpilot_conversations_evaluated_total"),
        "matches": value("inboxpilot_rule_matches_total", rule="assign-new"),
        "firings": value("inboxpilot_firings_total", rule="assign-new", outcome="done"),
        "actions": value("inboxpilot_actions_total", action="assign", outcome="done"),
        "bulk": value(
            "inboxpilot_api_requests_total", service="conversations-bulk-actions", method="POST", status="201"
        ),
        "dedupes": value("inboxpilot_ledger_dedupes_total", rule="assign-new"),
    }
    conversations = [simulator.sim.new_conversation(channel="sms") for _ in range(3)]
    with app_on(simulator, tmp_path, redis_url=redis_url) as built:
        loop = leader_loop(built)
        report = tick_and_drain(built, loop)
        (key, *_) = [item.key for step in report.steps for item in step.items]
        assert not built.runtime.ledger.claim(key, {})  # a second claim is a dedupe
        loop.pump_once()
        health = built.health_server(0)
        try:
            base = f"http://127.0.0.1:{health.port}"
            assert httpx.get(f"{base}/readyz").status_code == 200
            samples = scrape(base)
        finally:
            health.stop()

    def scraped(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert scraped("inboxpilot_polls_total", kind="incremental") == before["polls"] + 1
    assert scraped("inboxpilot_pages_fetched_total", kind="incremental") >= 1
    assert ("inboxpilot_poll_lag_seconds", ()) in samples
    assert scraped("inboxpilot_conversations_evaluated_total") == before["evaluated"] + 3
    assert scraped("inboxpilot_rule_matches_total", rule="assign-new") == before["matches"] + 3
    assert scraped("inboxpilot_firings_total", rule="assign-new", outcome="done") == before["firings"] + 3
    assert scraped("inboxpilot_actions_total", action="assign", outcome="done") == before["actions"] + 3
    bulk = {"service": "conversations-bulk-actions", "method": "POST"}
    assert scraped("inboxpilot_api_requests_total", **bulk, status="201") == before["bulk"] + 1
    assert scraped("inboxpilot_api_request_seconds_count", **bulk) >= 1
    assert scraped("inboxpilot_ledger_dedupes_total", rule="assign-new") == before["dedupes"] + 1
    assert ("inboxpilot_timer_backlog", ()) in samples
    assert scraped("inboxpilot_is_leader") in (0.0, 1.0)
    assert scraped("inboxpilot_rules_loaded") == 1
    labels = {label for (_, pairs) in samples for label, _ in pairs}
    assert labels <= ALLOWED_LABELS, f"unexpected labels: {labels - ALLOWED_LABELS}"
    ids = {str(c["id"]) for c in conversations}
    assert not [v for (_, pairs) in samples for label, v in pairs if label != "le" and v in ids]


def test_429_and_backoff_are_counted(clock: FakeClock) -> None:
    answers = [
        httpx.Response(429, json={"name": "TooManyRequests", "code": 429}, headers={"Retry-After": "3"}),
        httpx.Response(200, json={"total": 0, "limit": 50, "skip": 0, "data": []}),
    ]
    transport = httpx.MockTransport(lambda request: answers.pop(0))
    limited = value("inboxpilot_api_rate_limited_total")
    backoff = value("inboxpilot_api_backoff_seconds_total")
    requests_429 = value("inboxpilot_api_requests_total", service="conversations", method="GET", status="429")
    with ApiClient(
        "http://api.test",
        "tok",
        1,
        transport=transport,
        clock=clock,
        on_response=observe_api_response,
        on_backoff=observe_api_backoff,
    ) as client:
        client.find_page("/conversations", {"$limit": 1})
    assert value("inboxpilot_api_rate_limited_total") == limited + 1
    assert value("inboxpilot_api_backoff_seconds_total") == backoff + 3
    assert (
        value("inboxpilot_api_requests_total", service="conversations", method="GET", status="429")
        == requests_429 + 1
    )
