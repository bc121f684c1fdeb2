"""The whole loop, end to end: scheduler loop -> Redis broker -> dramatiq worker threads ->
simulator over loopback, on a fake clock. Every test checks the simulator's audit log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import pytest

from tests.e2e._exec_helpers import applied_posts, flush_redis, posts
from tests.support.dispatchers import TEST_POLL_TIMEOUT_MS
from worker.api.services import BULK_ACTIONS, SEND_PATHS
from worker.app import App
from worker.queue.actors import QUEUE
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle
from worker.state.lease import LeaderLease

JOIN_MS = 30_000

ROUTING_AND_SLA = """
rules:
  - id: assign-new
    once: per_conversation
    when: {status: open, owner: unset}
    then:
      - assign: 103
  - id: sla-breach
    once: per_inbound_message
    when: {status: open, waiting_for_reply: {longer_than: 30m}}
    then:
      - move: {pipeline: 1, stage: 14}
      - note: "SLA breached"
"""

FOLLOWUP = """
rules:
  - id: nudge
    once: per_inbound_message
    when: {status: open, silent_for: 4h}
    then:
      - reply: "Did that answer your question?"
"""


class Running:
    """An App with a leader loop and a 2-thread dramatiq worker."""

    def __init__(self, app: App, loop: Loop) -> None:
        self.app = app
        self.loop = loop

    def tick(self) -> None:
        """One incremental poll and one timer pump, then wait for the queue to drain."""
        self.loop.poll_once()
        self.loop.pump_once()
        self.drain()

    def drain(self) -> None:
        self.app.broker.join(QUEUE, timeout=JOIN_MS)


Start = Callable[..., Running]


@pytest.fixture
def start(simulator: SimulatorHandle, redis_url: str, tmp_path: Path) -> Iterator[Start]:
    flush_redis(redis_url)
    with ExitStack() as stack:

        def build(rules: str, **settings: object) -> Running:
            rules_file = tmp_path / "rules.yaml"
            rules_file.write_text(rules)
            options = simulator.worker_settings(redis_url, rules_path=rules_file, **settings)
            app = App.build(options, clock=simulator.clock)
            stack.callback(app.close)
            worker = app.worker(2, poll_timeout_ms=TEST_POLL_TIMEOUT_MS)
            worker.start()
            stack.callback(worker.stop)
            lease = LeaderLease(app.runtime.redis, "scheduler", 3600, simulator.clock)
            assert lease.try_acquire()
            loop = app.loop()
            loop.fencing_token = lambda: lease.token
            return Running(app, loop)

        yield build


def _sends(simulator: SimulatorHandle, channel: str, conversation_id: int) -> list[str]:
    return [
        str(e.body.get("message_text"))
        for e in applied_posts(simulator, SEND_PATHS[channel])
        if e.body.get("conversation_id") == conversation_id
    ]


def test_new_conversation_is_assigned_once(simulator: SimulatorHandle, start: Start) -> None:
    running = start(ROUTING_AND_SLA)
    conv = simulator.sim.new_conversation(channel="webchat")
    running.tick()
    running.tick()
    assigns = [e for e in applied_posts(simulator, BULK_ACTIONS) if e.body["action"] == "assign"]
    assert len(assigns) == 1
    assert assigns[0].body["conversation_ids"] == [conv["id"]]
    assert simulator.sim.conversation(conv["id"])["owner_id"] == 103


def test_sla_deadline_escalates_once(simulator: SimulatorHandle, start: Start) -> None:
    running = start(ROUTING_AND_SLA)
    conv = simulator.sim.new_conversation(channel="sms")
    running.tick()
    simulator.clock.advance(timedelta(minutes=29, seconds=59))
    running.tick()
    assert not [e for e in applied_posts(simulator, BULK_ACTIONS) if e.body["action"] == "move"]
    simulator.clock.advance(timedelta(seconds=1))
    running.tick()
    for _ in range(3):
        simulator.clock.advance(timedelta(minutes=5))
        running.tick()
    moves = [e for e in applied_posts(simulator, BULK_ACTIONS) if e.body["action"] == "move"]
    assert [m.body["conversation_ids"] for m in moves] == [[conv["id"]]]
    assert _sends(simulator, "sms", conv["id"]) == ["SLA breached"]
    assert simulator.sim.conversation(conv["id"])["pipeline_stage_id"] == 14


def test_followup_fires_once_and_a_customer_reply_cancels_it(
    simulator: SimulatorHandle, start: Start
) -> None:
    running = start(FOLLOWUP)
    quiet = simulator.sim.new_conversation(channel="webchat")
    answering = simulator.sim.new_conversation(channel="webchat")
    simulator.clock.advance(60)
    simulator.sim.team_reply(quiet["id"])
    simulator.sim.team_reply(answering["id"])
    running.tick()
    simulator.clock.advance(timedelta(hours=2))
    simulator.sim.customer_message(answering["id"], "still there")
    running.tick()
    simulator.clock.advance(timedelta(hours=2))
    running.tick()
    simulator.clock.advance(timedelta(hours=5))
    running.tick()
    assert _sends(simulator, "webchat", quiet["id"]) == ["Did that answer your question?"]
    assert _sends(simulator, "webchat", answering["id"]) == []


def test_120_matches_are_3_bulk_calls(simulator: SimulatorHandle, start: Start) -> None:
    running = start(ROUTING_AND_SLA)
    for _ in range(120):
        simulator.sim.new_conversation(channel="sms")
    running.tick()
    assigns = [e for e in applied_posts(simulator, BULK_ACTIONS) if e.body["action"] == "assign"]
    assert sorted(len(e.body["conversation_ids"]) for e in assigns) == [20, 50, 50]


def test_commit_then_fail_reply_is_sent_exactly_once(simulator: SimulatorHandle, start: Start) -> None:
    running = start(FOLLOWUP)
    conv = simulator.sim.new_conversation(channel="webchat")
    simulator.clock.advance(60)
    simulator.sim.team_reply(conv["id"])
    running.tick()
    simulator.clock.advance(timedelta(hours=4, seconds=1))
    # Every send is applied and then answered with a dropped connection or a 503.
    simulator.sim.set_faults(commit_then_fail_rate=1.0, paths=[SEND_PATHS["webchat"]], seed=5)
    running.loop.poll_once()
    running.loop.pump_once()
    simulator.sim.set_faults(commit_then_fail_rate=0.0)
    running.drain()
    assert len(posts(simulator, SEND_PATHS["webchat"])) >= 1
    assert _sends(simulator, "webchat", conv["id"]) == ["Did that answer your question?"]


def test_two_scheduler_replicas_make_no_duplicates(simulator: SimulatorHandle, start: Start) -> None:
    running = start(ROUTING_AND_SLA)
    # A second replica that (wrongly) believes it leads too: only the ledger stands between them.
    replica = running.app.loop()
    replica.fencing_token = running.loop.fencing_token
    for _ in range(30):
        simulator.sim.new_conversation(channel="webchat")
    running.loop.poll_once()
    replica.poll_once()
    replica.resync_once()
    running.drain()
    assigned = [
        cid
        for e in applied_posts(simulator, BULK_ACTIONS)
        if e.body["action"] == "assign"
        for cid in e.body["conversation_ids"]
    ]
    assert len(assigned) == 30 == len(set(assigned))


def test_rule_edit_takes_effect_and_a_broken_edit_keeps_the_old_rules(
    simulator: SimulatorHandle, start: Start, tmp_path: Path
) -> None:
    running = start(ROUTING_AND_SLA)
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(ROUTING_AND_SLA.replace("assign: 103", "assign: 104"))
    assert running.app.runtime.rulebook.reload()
    first = simulator.sim.new_conversation(channel="sms")
    running.tick()
    assert simulator.sim.conversation(first["id"])["owner_id"] == 104
    rules_file.write_text(ROUTING_AND_SLA.replace("assign: 103", "assign: {user: oops}"))
    assert not running.app.runtime.rulebook.reload()
    assert running.app.runtime.rulebook.errors
    second = simulator.sim.new_conversation(channel="sms")
    running.tick()
    assert simulator.sim.conversation(second["id"])["owner_id"] == 104


def test_a_claim_whose_message_was_lost_is_redriven(simulator: SimulatorHandle, start: Start) -> None:
    """The scheduler died between claim and enqueue: the ledger notices and the firing still happens once."""
    running = start(ROUTING_AND_SLA)
    conv = simulator.sim.new_conversation(channel="webchat")

    class Lost:
        def enqueue(self, step: object) -> None:
            """The message never reaches the broker."""

    crashed = running.app.loop()
    crashed.dispatcher = Lost()
    crashed.poll_once()
    assert running.app.runtime.ledger.pending_count() == 1
    assert running.loop.redrive_once() == 0  # not yet: it may still be on its way
    simulator.clock.advance(running.app.runtime.ledger.redrive_after_s + 1)
    assert running.loop.redrive_once() == 1
    running.drain()
    running.loop.resync_once()
    running.drain()
    assigns = [e for e in applied_posts(simulator, BULK_ACTIONS) if e.body["action"] == "assign"]
    assert [a.body["conversation_ids"] for a in assigns] == [[conv["id"]]]
    assert running.app.runtime.ledger.pending_count() == 0


HAND_BACK = """
rules:
  - id: hand-back-from-ai
    when: {status: open, owner: unset, ai_assistant: {in: [7]}}
    then:
      - unassign_ai_assistant
      - assign: 105
"""


def test_a_rule_whose_first_action_makes_it_false_still_completes(
    simulator: SimulatorHandle, start: Start
) -> None:
    running = start(HAND_BACK)
    conv = simulator.sim.new_conversation(channel="webchat")
    simulator.sim.human_change(conv["id"], {"ai_assistant_id": 7})
    running.tick()
    running.tick()
    record = simulator.sim.conversation(conv["id"])
    assert (record["ai_assistant_id"], record["owner_id"]) == (None, 105)
    actions = sorted(e.body["action"] for e in applied_posts(simulator, BULK_ACTIONS))
    assert actions == ["assign", "unassign_ai_assistant"]
