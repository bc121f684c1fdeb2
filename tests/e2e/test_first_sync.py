"""Issue 17.4: the first sync does not read its own writes back, and a conversation that
changes while a poll pages is processed again in that tick.

Counts requests, never time (the time goal is `bench/first_sync.py`).
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from tests.e2e.conftest import CountingTransport, RuntimeFactory
from tests.support.dispatchers import Collector
from tests.support.leading import lead
from worker.execution.execute import execute
from worker.scheduling.poller import Budget, Poller
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle
from worker.state.watermark import WatermarkState

# What an outsider writes: assign, move after a wait, a note, a follow-up with the contact's name.
RULES = """
rules:
  - id: assign-new
    once: per_conversation
    when: {status: open, owner: unset}
    then: [{assign: 101}]
  - id: escalate-waiting
    once: per_inbound_message
    when: {status: open, waiting_for_reply: 1h}
    then: [{move: {pipeline: 1, stage: 14}}]
  - id: flag-tagged
    once: per_conversation
    when: {status: open, tags: {any: [vip, urgent, billing, support, returning]}}
    then: [{note: "Flagged: check the history first."}]
  - id: follow-up
    once: per_team_reply
    when: {status: open, channel: [webchat, sms, playground], silent_after_reply: 24h}
    then: [{reply: "Hi {{ contact.first_name }}, did our last message help?"}]
"""
SEEDED = 150


def _reads(transport: CountingTransport, since: int) -> Counter[str]:
    out: Counter[str] = Counter()
    for method, path in transport.requests[since:]:
        if method != "GET":
            continue
        if path.startswith("/conversation-messages-"):
            out["messages"] += 1
        elif path.startswith("/contacts"):
            out["contacts"] += 1
        else:
            out[path.rsplit("/", 1)[0] if path.count("/") > 1 else path] += 1
    return out


def _writes(simulator: SimulatorHandle) -> int:
    return sum(1 for e in simulator.sim.audit_log() if e.applied)


def test_a_first_sync_reads_no_messages_or_contacts_back_for_its_own_writes(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    simulator.sim.seed(SEEDED)
    transport = CountingTransport()
    runtime = make_runtime(RULES, transport=transport)
    collector = Collector()
    loop = lead(Loop(runtime, collector))
    loop.poll_once()  # the first sync: every conversation
    steps = collector.steps
    while steps:  # what the workers do with the claimed steps
        execute(runtime, steps.pop(0), steps.append)
    written = _writes(simulator)
    assert written > 50  # notes, follow-ups and bulk calls: every written conversation moved
    simulator.clock.advance(1)
    before = len(transport.requests)
    report = loop.poll_once()  # reads back every conversation our writes moved
    assert report.conversations > 50
    reads = _reads(transport, before)
    # Their messages and contacts are known: notes and bulk calls move no message field,
    # our replies extend the cached messages (worker/state/own_writes.py).
    assert reads["messages"] == 0 and reads["contacts"] == 0, reads
    assert _writes(simulator) == written  # and nothing fires twice


def test_a_conversation_that_changes_while_a_poll_pages_is_processed_again_in_that_tick(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    """Page 1 is read; then a customer writes in one of its conversations and a new one
    arrives. Both are on page 2: the changed one is not dropped as "already seen" (the
    watermark moves past it with the new one, so it would wait for the next resync)."""
    runtime = make_runtime(RULES)
    for _ in range(60):
        simulator.sim.new_conversation(channel="sms")
        simulator.clock.advance(timedelta(milliseconds=10))
    poller = Poller(runtime.api.client, 50, runtime.clock)
    pages = poller.changed(WatermarkState(None, frozenset()), Budget(max_pages=10, max_s=60))
    first = next(pages).conversations
    assert len(first) == 50
    simulator.clock.advance(1)
    simulator.sim.customer_message(first[0].id, "one more thing")
    simulator.clock.advance(1)
    new = simulator.sim.new_conversation(channel="sms")["id"]
    second = [c.id for page in pages for c in page.conversations]
    assert second[-2:] == [first[0].id, new]
    assert len(second) == 12
