"""`tag` / `untag` end to end: the real loop, the plan command, person edits around our write,
and commit-then-fail on the PATCH. The simulator's audit log is the judge."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from typer.testing import CliRunner

from tests.e2e import test_loop_e2e
from tests.e2e._exec_helpers import flush_redis, plan_and_claim
from tests.e2e.conftest import RuntimeFactory
from tests.e2e.test_loop_e2e import Start
from worker.cli import app
from worker.execution.execute import execute
from worker.simulator.audit import AuditEntry
from worker.simulator.testing import SimulatorHandle

start = test_loop_e2e.start  # the whole-loop fixture: scheduler loop, Redis broker, worker threads

TAGGING = """
rules:
  - id: mark-vip
    once: per_conversation
    when: {status: open, tags: {none: [vip]}}
    then:
      - tag: [vip, seen]
      - untag: billing
  - id: mark-webchat
    once: per_conversation
    when: {status: open, channel: webchat}
    then:
      - tag: web
"""


def _tag_patches(simulator: SimulatorHandle, conversation_id: int | None = None) -> list[AuditEntry]:
    return [
        e
        for e in simulator.sim.audit.applied("PATCH", "/conversations/")
        if conversation_id is None or e.path == f"/conversations/{conversation_id}"
    ]


def test_tags_are_changed_once_in_one_patch_per_conversation(
    simulator: SimulatorHandle, start: Start
) -> None:
    running = start(TAGGING)
    first = simulator.sim.new_conversation(channel="webchat", tags=["billing", "sales"])
    second = simulator.sim.new_conversation(channel="sms")
    running.tick()
    running.tick()  # our PATCH bumped updated_at: the rules see the conversations again
    running.tick()
    assert simulator.sim.conversation(first["id"])["tags"] == ["sales", "vip", "seen", "web"]
    assert simulator.sim.conversation(second["id"])["tags"] == ["vip", "seen"]
    # Actions run in order: the first action of both rules is one PATCH, mark-vip's second
    # action (untag) one more after it; nothing re-fired.
    assert [e.body for e in _tag_patches(simulator, first["id"])] == [
        {"tags": ["billing", "sales", "vip", "seen", "web"]},
        {"tags": ["sales", "vip", "seen", "web"]},
    ]
    assert len(_tag_patches(simulator, second["id"])) == 1


def test_a_tag_a_person_added_after_planning_is_kept(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    runtime = make_runtime(TAGGING)
    conv = simulator.sim.new_conversation(channel="sms", tags=["billing"])
    steps = plan_and_claim(runtime, [conv["id"]])
    simulator.sim.human_change(conv["id"], {"tags": ["billing", "angry"]})
    for step in steps:
        execute(runtime, step)
    assert simulator.sim.conversation(conv["id"])["tags"] == ["angry", "vip", "seen"]


class StaleWriter(httpx.HTTPTransport):
    """Right after our first tags PATCH, a person's screen writes the list it loaded earlier."""

    def __init__(self, simulator: SimulatorHandle, stale: list[str]) -> None:
        super().__init__()
        self.simulator, self.stale, self.done = simulator, stale, False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "PATCH" and not self.done:
            self.done = True
            cid = int(request.url.path.rsplit("/", 1)[1])
            self.simulator.sim.human_change(cid, {"tags": self.stale})
        return response


def test_a_stale_list_written_right_after_ours_is_repaired_keeping_both(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    conv = simulator.sim.new_conversation(channel="sms", tags=["billing"])
    runtime = make_runtime(TAGGING, transport=StaleWriter(simulator, ["billing", "person"]))
    steps = plan_and_claim(runtime, [conv["id"]])
    for step in steps:
        execute(runtime, step)
    assert simulator.sim.conversation(conv["id"])["tags"] == ["person", "vip", "seen"]
    # The rule's actions run in order: the tag (its PATCH repaired after the stale write
    # keeps both), then the untag.
    assert [e.body["tags"] for e in _tag_patches(simulator)] == [
        ["billing", "vip", "seen"],
        ["billing", "person", "vip", "seen"],
        ["person", "vip", "seen"],
    ]
    entries = [runtime.ledger.get(item.key) for step in steps for item in step.items]
    assert [(e.state, e.outcome.get("repaired")) for e in entries if e is not None] == [
        ("done", True),
        ("done", False),
    ]


def test_commit_then_fail_on_the_patch_changes_tags_once(simulator: SimulatorHandle, start: Start) -> None:
    running = start(TAGGING)
    conv = simulator.sim.new_conversation(channel="sms", tags=["billing"])
    simulator.sim.set_faults(commit_then_fail_rate=1.0, paths=["/conversations/"], seed=3)
    running.loop.poll_once()
    running.loop.pump_once()
    running.drain()
    simulator.sim.set_faults(commit_then_fail_rate=0.0)
    running.tick()
    assert simulator.sim.conversation(conv["id"])["tags"] == ["vip", "seen"]
    # One PATCH per action (tag, then untag), each applied once despite the lost answers.
    assert len(_tag_patches(simulator, conv["id"])) == 2


def test_plan_command_shows_the_tag_change(
    simulator: SimulatorHandle, tmp_path: Path, redis_url: str
) -> None:
    flush_redis(redis_url)
    rules = tmp_path / "rules.yaml"
    rules.write_text(TAGGING)
    conv = simulator.sim.new_conversation(channel="sms", tags=["billing"])
    env = {
        "INBOXPILOT_API_URL": simulator.url,
        "INBOXPILOT_API_TOKEN": simulator.token,
        "INBOXPILOT_RULES_PATH": str(rules),
        "INBOXPILOT_REDIS_URL": redis_url,
    }
    result = CliRunner().invoke(app, ["plan", "--full"], env=env)
    assert result.exit_code == 0, result.output
    assert f"conversation {conv['id']:<6} tags +vip +seen; tags -billing  [c]" in result.stdout
    as_json = CliRunner().invoke(app, ["plan", "--full", "--json"], env=env)
    (firing,) = json.loads(as_json.stdout)["firings"]
    assert [a["action"] for a in firing["actions"]] == [
        {"type": "tags", "add": ["vip", "seen"]},
        {"type": "tags", "remove": ["billing"]},
    ]
    assert _tag_patches(simulator) == []
