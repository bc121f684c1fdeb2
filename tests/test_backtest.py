"""`worker.backtest` and `inboxpilot backtest` against the simulator seeded with a known history."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from worker.api.client import ApiClient
from worker.api.errors import NotFound
from worker.api.services import Services
from worker.backtest import (
    IdleCheck,
    Report,
    conversation_count,
    fetch_histories,
    format_table,
    read_ahead,
    replay,
)
from worker.cli import app
from worker.config import load_settings
from worker.rules.loader import load_texts
from worker.simulator.testing import SimulatorHandle

RULES = """
rules:
  - id: first-response
    once: per_conversation
    when: {status: open, team_replied: false, age: 1h}
    then:
      - note: "First response is late."
  - id: nudge
    once: per_inbound_message
    when: {status: open, silent_for: 4h}
    then:
      - reply: "Still there?"
  - id: route
    when: {status: open, owner: unset}
    then:
      - assign: 301
"""
MIN = timedelta(minutes=1)


def _history(handle: SimulatorHandle) -> dict[str, int]:
    """A known day: answered in time, answered 20 s after the deadline, never answered, went quiet twice."""
    sim, clock = handle.sim, handle.clock
    ids = {
        name: sim.new_conversation(channel="webchat")["id"]
        for name in ("in_time", "just_late", "never", "quiet")
    }
    clock.advance(30 * MIN)
    sim.team_reply(ids["in_time"])
    sim.team_reply(ids["quiet"])  # t0+30m: silent from here
    clock.advance(30 * MIN + timedelta(seconds=20))
    sim.team_reply(ids["just_late"])  # t0+1h00m20s: after the deadline, within the latency
    clock.advance(6 * 60 * MIN)  # t0+7h: the quiet one got its nudge at t0+4h30m
    sim.customer_message(ids["quiet"])
    clock.advance(10 * MIN)
    sim.team_reply(ids["quiet"])  # t0+7h10m20s -> next nudge due t0+11h10m20s
    sim.reassign(ids["in_time"], 302)
    clock.advance(12 * 60 * MIN)
    return ids


def _replay(handle: SimulatorHandle, since: datetime) -> Report:
    ruleset = load_texts([("t.yaml", RULES)], strict=True).ruleset
    settings = load_settings(api_url=handle.url, api_token=handle.token)
    api = Services(ApiClient.from_settings(settings, clock=handle.clock))
    try:
        return replay(ruleset, list(fetch_histories(api, since)), since, handle.clock.now())
    finally:
        api.client.close()


def test_replay_reports_firings_breaches_and_moot(simulator: SimulatorHandle) -> None:
    t0 = simulator.clock.now()
    ids = _history(simulator)
    audit_before = len(simulator.sim.audit_log())
    report = _replay(simulator, t0 - timedelta(days=1))
    assert len(simulator.sim.audit_log()) == audit_before  # read-only
    got = {(f.rule_id, f.conversation_id, f.at - t0) for f in report.firings}
    first = {("first-response", ids[n], 60 * MIN) for n in ("just_late", "never")}
    nudges = {
        ("nudge", ids["quiet"], 270 * MIN),
        ("nudge", ids["quiet"], 670 * MIN + timedelta(seconds=20)),
        ("nudge", ids["in_time"], 270 * MIN),
        ("nudge", ids["just_late"], 300 * MIN + timedelta(seconds=20)),
    }
    routes = {("route", ids[n], timedelta(0)) for n in ids}
    assert got == first | nudges | routes
    moot = {(f.rule_id, f.conversation_id) for f in report.moot()}
    assert moot == {("first-response", ids["just_late"])}
    assert "team reply" in (report.moot()[0].moot_by or "")
    breaches = {f.conversation_id: f.waited_s for f in report.breaches()}
    assert breaches == {ids["just_late"]: 3600.0, ids["never"]: 3600.0}
    rules = report.to_dict()["rules"]
    assert rules["nudge"] == {
        "firings": 4,
        "moot": 0,
        "conversations": sorted([ids["in_time"], ids["just_late"], ids["quiet"]]),
    }
    assert sum(report.per_day()[t0.date().isoformat()].values()) >= 6


def test_a_situation_that_fired_before_the_window_does_not_fire_again(simulator: SimulatorHandle) -> None:
    t0 = simulator.clock.now()
    ids = _history(simulator)
    report = _replay(simulator, t0 + 6 * 60 * MIN)  # after the routes, first-response and first nudges
    got = {(f.rule_id, f.conversation_id, f.at - t0) for f in report.firings}
    assert got == {("nudge", ids["quiet"], 670 * MIN + timedelta(seconds=20))}


@pytest.mark.parametrize("as_json", [True, False])
def test_backtest_command(
    simulator: SimulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    simulator.clock.set(datetime.now(UTC) - timedelta(days=2))
    ids = _history(simulator)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    monkeypatch.setenv("INBOXPILOT_API_URL", simulator.url)
    monkeypatch.setenv("INBOXPILOT_API_TOKEN", simulator.token)
    args = ["backtest", str(rules), "--since", "7d", *(["--json"] if as_json else [])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert simulator.token not in result.output
    if as_json:
        data = json.loads(result.stdout)
        assert data["conversations"] == 4
        assert data["rules"]["first-response"]["conversations"] == sorted([ids["just_late"], ids["never"]])
        assert [f["rule_id"] for f in data["firings"] if f["moot_by"]] == ["first-response"]
    else:
        assert "SLA breaches caught: 2" in result.stdout
        assert "moot (a person acted first): 1" in result.stdout


def test_backtest_rejects_bad_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - id: x\n    when: {chanel: sms}\n    then: [unassign]\n")
    monkeypatch.setenv("INBOXPILOT_API_TOKEN", "t")
    result = CliRunner().invoke(app, ["backtest", str(rules)])
    assert result.exit_code == 1 and "chanel" in result.output


SLA_RULES = """
calendars:
  always:
    timezone: UTC
    hours: {mon: ["00:00-24:00"], tue: ["00:00-24:00"], wed: ["00:00-24:00"], thu: ["00:00-24:00"],
            fri: ["00:00-24:00"], sat: ["00:00-24:00"], sun: ["00:00-24:00"]}
agents:
  - {id: 101, name: Ana, enabled: false}
sla_policies:
  std:
    calendar: always
    first_response: 1h
    tiers:
      - at: 80%
        then: [{note: "SLA warning"}]
      - at: 100%
        then: [{note: "SLA breached"}]
rules:
  - id: hand-on-when-offline
    once: per_assignment
    when: {status: open, owner: [101], waiting_for_reply: {longer_than: 1m}, owner_unavailable: {grace: 10m}}
    then: [{note: "handed on"}]
"""


def test_sla_breaches_come_from_sla_rules_only_and_the_rest_is_counted(simulator: SimulatorHandle) -> None:
    """Not the hand-on rule (it waits too, but routes), not the 80% warning tier; '… and N more'."""
    t0 = simulator.clock.now()
    ids = [simulator.sim.new_conversation(channel="webchat")["id"] for _ in range(3)]
    simulator.sim.reassign(ids[0], 101)  # Ana is switched off: the hand-on fires after its grace
    simulator.clock.advance(2 * 60 * MIN)
    ruleset = load_texts([("t.yaml", SLA_RULES)], strict=True).ruleset
    settings = load_settings(api_url=simulator.url, api_token=simulator.token)
    api = Services(ApiClient.from_settings(settings, clock=simulator.clock))
    try:
        report = replay(ruleset, list(fetch_histories(api, t0 - MIN)), t0 - MIN, simulator.clock.now())
    finally:
        api.client.close()
    fired = {f.rule_id for f in report.firings}
    assert "hand-on-when-offline" in fired and any(r.endswith("-80") for r in fired), fired
    breaches = report.breaches()
    assert {f.rule_id for f in breaches} == {"sla-std-first-response-100"}
    assert sorted(f.conversation_id for f in breaches) == sorted(ids)
    text = format_table(report, detail=1)
    assert "SLA breaches caught: 3" in text
    assert "  … and 2 more (--json lists them all)" in text


def test_read_ahead_keeps_the_order_and_raises_a_reading_error_in_its_place() -> None:
    def reading() -> Iterator[int]:
        yield from range(120)
        raise NotFound("gone", path="/conversation-messages-sms")

    got: list[int] = []
    with pytest.raises(NotFound):
        for n in read_ahead(reading(), depth=7):
            got.append(n)
    assert got == list(range(120))


def test_read_ahead_passes_none_on_as_an_item() -> None:
    assert list(read_ahead([1, None, 2], depth=1)) == [1, None, 2]


def test_read_ahead_stops_reading_when_the_replay_stops() -> None:
    read: list[int] = []

    def reading() -> Iterator[int]:
        for n in range(10_000):
            read.append(n)
            yield n

    ahead = read_ahead(reading(), depth=5)
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    ahead.close()
    assert len(read) <= 3 + 5 + 1  # no further than its depth
    assert not [t for t in threading.enumerate() if t.name == "backtest-read-ahead"]  # and it ended


class _AfterFirstPage(httpx.BaseTransport):
    """Loopback HTTP that runs `hook` once, right after the first page of unchanged conversations."""

    def __init__(self, hook: Callable[[], None]) -> None:
        self._inner = httpx.HTTPTransport()
        self._hook: Callable[[], None] | None = hook

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        hook, keys = self._hook, {key for key, _ in httpx.QueryParams(request.url.query).multi_items()}
        if hook is not None and "updated_at[$lt]" in keys:
            self._hook = None
            response.read()
            hook()
        return response


def test_a_conversation_that_changes_while_the_unchanged_ones_are_read_hides_none_and_counts_once(
    simulator: SimulatorHandle,
) -> None:
    sim, clock = simulator.sim, simulator.clock
    old = [sim.new_conversation(channel="webchat")["id"] for _ in range(120)]  # 3 pages, unchanged
    clock.advance(timedelta(days=2))
    since, now = clock.now() - timedelta(days=1), clock.now()
    ruleset = load_texts([("t.yaml", RULES)], strict=True).ruleset

    def customer_writes_again() -> None:  # the first of the first page leaves the unchanged set
        sim.customer_message(old[0], "back again")

    settings = load_settings(api_url=simulator.url, api_token=simulator.token)
    client = ApiClient.from_settings(settings, clock=clock, transport=_AfterFirstPage(customer_writes_again))
    try:
        assert conversation_count(Services(client)) == len(old)  # the progress bar's total
        read = list(fetch_histories(Services(client), since, idle=IdleCheck(ruleset, since, now)))
    finally:
        client.close()
    times = Counter(h.conversation.id for h in read)
    assert set(times) == set(old) and set(times.values()) == {1}  # none skipped, none twice
    (again,) = (h for h in read if h.conversation.id == old[0])
    assert not again.idle and again.messages[-1].message_text == "back again"  # as it is now
