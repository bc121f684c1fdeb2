"""A Feathers server whose query parser keeps qs's default `arrayLimit` (20) refuses the worker's
batches of 50 (50 `id[$in][]`, `$or[0..49]`) with 400 BadRequest. Against such a server (the
simulator's `array_limit=20`, over real sockets) a resync, a bulk step's pre-call re-read, a
reply step's read-back, `plan` and `sla` give what they give against the permissive server,
and the worker learns the limit from one 400."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import httpx
from typer.testing import CliRunner

from tests.e2e._exec_helpers import flush_redis
from tests.support.dispatchers import Collector
from worker.api.client import ApiClient
from worker.api.services import Services
from worker.cli import app
from worker.cli.sla_cmds import sla_clocks
from worker.clock import FakeClock
from worker.execution.execute import execute
from worker.rules.evaluator import Snapshot
from worker.runtime import Runtime
from worker.scheduling.snapshots import SnapshotReader
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle, served_simulator
from worker.state.sla_pauses import SlaPauses

TOKEN = "qs-limit-token"
WED_10 = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)
QS_LIMIT = 20
T = TypeVar("T")


class Recording(httpx.HTTPTransport):
    """Every answer's method, path, status and query (a real socket underneath)."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[tuple[str, str, int, list[tuple[str, str]]]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        query = parse_qsl(request.url.query.decode(), keep_blank_values=True)
        self.answers.append((request.method, request.url.path, response.status_code, query))
        return response

    def refused(self) -> int:
        return sum(1 for _, _, status, _ in self.answers if status == 400)

    def largest_limit(self) -> int:
        return max((int(v) for *_, q in self.answers for k, v in q if k == "$limit"), default=0)


@contextmanager
def server(array_limit: int | None, scene: Callable[[SimulatorHandle], None]) -> Iterator[SimulatorHandle]:
    with served_simulator(FakeClock(WED_10), TOKEN, strict=True, array_limit=array_limit) as handle:
        scene(handle)
        yield handle


def on_both(
    scene: Callable[[SimulatorHandle], None],
    act: Callable[[SimulatorHandle, Runtime], T],
    rules: str,
    redis_url: str,
    tmp_path: Path,
) -> tuple[T, T, Recording, Runtime]:
    """`act` on a runtime against the permissive server, then against the qs-limited one."""
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(rules)
    results: list[T] = []
    for limit in (None, QS_LIMIT):
        with server(limit, scene) as handle:
            flush_redis(redis_url)
            recording = Recording()
            settings = handle.worker_settings(redis_url, rules_path=rules_file)
            runtime = Runtime.build(settings, clock=handle.clock, transport=recording)
            try:
                results.append(act(handle, runtime))
            finally:
                runtime.close()
            assert handle.sim.refused_arrays == (0 if limit is None else 1)
    return results[0], results[1], recording, runtime


def assert_learnt_once(recording: Recording, runtime: Runtime) -> None:
    assert recording.refused() == 1  # the first batch of 50; every later one was split first
    assert runtime.api.client.batch_limit == QS_LIMIT
    assert recording.largest_limit() <= 50


# --- a resync: snapshots with messages and contacts ---------------------------------------------

SNAPSHOT_RULES = """
rules:
  - id: refund
    when: {status: open, message_text: {keywords: [refund]}, contact: {field: name, set: true}}
    then:
      - note: "refund asked"
  - id: nudge
    once: per_inbound_message
    when: {status: open, silent_after_reply: 4h}
    then:
      - reply: "Anything else?"
"""


def windows(sizes: list[int]) -> Callable[[SimulatorHandle], None]:
    """sms conversations answered by the team, then `sizes[i]` customer messages each."""

    def scene(handle: SimulatorHandle) -> None:
        sim, clock = handle.sim, handle.clock
        for n, size in enumerate(sizes):
            cid = sim.new_conversation(channel="sms", text=f"refund {n}")["id"]
            clock.advance(1)
            sim.team_reply(cid)
            for k in range(size):
                clock.advance(1)
                sim.customer_message(cid, f"refund? {k}")
        clock.advance(timedelta(hours=5))

    return scene


def test_a_resync_reads_the_same_snapshots_and_plans_the_same_steps(redis_url: str, tmp_path: Path) -> None:
    def resync(_: SimulatorHandle, runtime: Runtime) -> tuple[list[Snapshot], list[dict[str, Any]]]:
        collector = Collector()
        Loop(runtime, collector).resync_once()
        conversations = list(runtime.api.conversations.find({"status": "open"}))
        reader = SnapshotReader(runtime.api, SlaPauses(runtime.redis))
        snapshots = reader.read(runtime.rulebook.ruleset, conversations, runtime.clock.now())
        return snapshots, [step.to_dict() for step in collector.steps]

    sizes = ([3] + [1] * 40) * 3 + [0, 60, 17, 51, 2]
    permissive, limited, recording, runtime = on_both(
        windows(sizes), resync, SNAPSHOT_RULES, redis_url, tmp_path
    )
    assert limited == permissive
    snapshots, steps = limited
    assert len(snapshots) == len(sizes) and all(s.contact is not None for s in snapshots)
    assert sorted(len(s.messages or ()) for s in snapshots)[-1] == 60
    assert sum(len(step["items"]) for step in steps) > len(sizes)
    assert_learnt_once(recording, runtime)


# --- a bulk step's pre-call re-read, and a reply step's read-back --------------------------------

BULK_RULES = """
rules:
  - id: take
    when: {status: open, channel: sms, owner: unset}
    then:
      - assign: 105
"""
REPLY_RULES = """
rules:
  - id: ack
    once: per_inbound_message
    when: {status: open, waiting_for_reply: {longer_than: 1m}}
    then:
      - reply: "We got your message."
"""


def conversations(n: int) -> Callable[[SimulatorHandle], None]:
    def scene(handle: SimulatorHandle) -> None:
        for k in range(n):
            handle.sim.new_conversation(channel="sms", text=f"hello {k}")
        handle.clock.advance(timedelta(minutes=5))

    return scene


def run_steps(handle: SimulatorHandle, runtime: Runtime) -> tuple[list[Any], dict[int, Any]]:
    """Plan by one poll, execute every step; what the server was sent and what it holds."""
    collector = Collector()
    Loop(runtime, collector).poll_once()
    for step in collector.steps:
        execute(runtime, step)
    sent = [(e.path, e.body) for e in handle.sim.audit_log() if e.method == "POST" and e.applied]
    held = {
        cid: (c["owner_id"], [m["message_text"] for m in handle.sim.messages(cid)])
        for cid, c in handle.sim.store.conversations.records.items()
    }
    return sent, held


def test_a_bulk_step_re_reads_its_conversations_and_acts_the_same(redis_url: str, tmp_path: Path) -> None:
    permissive, limited, recording, runtime = on_both(
        conversations(70), run_steps, BULK_RULES, redis_url, tmp_path
    )
    assert limited == permissive
    sent, held = limited
    assert sorted(len(body["conversation_ids"]) for _, body in sent) == [20, 50]
    assert {owner for owner, _ in held.values()} == {105}
    assert_learnt_once(recording, runtime)


def test_a_reply_step_reads_back_and_sends_each_reply_once(redis_url: str, tmp_path: Path) -> None:
    permissive, limited, recording, runtime = on_both(
        conversations(70), run_steps, REPLY_RULES, redis_url, tmp_path
    )
    assert limited == permissive
    sent, held = limited
    assert len(sent) == 70
    assert all(texts.count("We got your message.") == 1 for _, texts in held.values())
    assert_learnt_once(recording, runtime)


# --- plan and sla, as the CLI runs them ---------------------------------------------------------

PLAN_RULES = """
rules:
  - id: refund
    when: {status: open, message_text: {keywords: [refund]}, contact: {field: name, set: true}}
    then:
      - note: "refund asked"
  - id: park
    when: {status: open, channel: sms}
    then:
      - move: {pipeline: 1, stage: 12}
"""
SLA_RULES = """
sla_policies:
  std:
    first_response: 1h
    next_response: 1h
    tiers:
      - {at: 50%, then: [{note: "[half]"}]}
rules: []
"""


def test_plan_full_prints_the_same_plan(redis_url: str, tmp_path: Path) -> None:
    rules = tmp_path / "plan.yaml"
    rules.write_text(PLAN_RULES)
    outputs = []
    for limit in (None, QS_LIMIT):
        with server(limit, windows([2, 0, 1] * 25)) as handle:
            flush_redis(redis_url)
            env = {
                "INBOXPILOT_API_URL": handle.url,
                "INBOXPILOT_API_TOKEN": handle.token,
                "INBOXPILOT_RULES_PATH": str(rules),
                "INBOXPILOT_REDIS_URL": redis_url,
            }
            result = CliRunner().invoke(app, ["plan", "--full", "--json"], env=env)
            assert result.exit_code == 0, result.output
            outputs.append(json.loads(result.stdout))
            assert handle.sim.refused_arrays == (0 if limit is None else 1)
    assert outputs[1] == outputs[0]
    assert outputs[0]["actions_planned"] >= 75


def test_sla_lists_the_same_clocks(redis_url: str, tmp_path: Path) -> None:
    def clocks(handle: SimulatorHandle, runtime: Runtime) -> list[Any]:
        # `sla` reads with a client of its own (ApiClient.from_settings), as here.
        api = Services(ApiClient.from_settings(runtime.settings, transport=recording))
        found = list(api.conversations.find({"status": "open"}))
        clocks = sla_clocks(api, runtime.rulebook.ruleset, found, handle.clock.now(), runtime.settings)
        learnt.append(getattr(api.client, "batch_limit", 0))
        return clocks

    recording = Recording()
    learnt: list[int] = []
    permissive, limited, *_ = on_both(windows([1, 0, 2] * 25), clocks, SLA_RULES, redis_url, tmp_path)
    assert limited == permissive
    assert len(limited) == 50  # the conversations with a customer message after the reply
    assert learnt == [50, QS_LIMIT]
    assert recording.refused() == 1
