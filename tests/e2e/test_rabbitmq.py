"""The loop with RabbitMQ as the dramatiq broker (Redis still holds the ledger, locks and
timers): a new conversation is assigned exactly once. Runs when AMQP_URL is set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e._app_helpers import app_on, leader_loop, tick_and_drain
from tests.e2e._exec_helpers import flush_redis
from worker.api.services import BULK_ACTIONS
from worker.app import App
from worker.queue.actors import QUEUE
from worker.simulator.testing import SimulatorHandle

AMQP_URL = os.environ.get("AMQP_URL", "")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not AMQP_URL,
        reason="RabbitMQ broker test: set AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ "
        "(.ci/run does when a RabbitMQ server answers) and install the rabbitmq extra",
    ),
]


@pytest.fixture
def rabbit_app(simulator: SimulatorHandle, redis_url: str, tmp_path: Path) -> Iterator[App]:
    flush_redis(redis_url)
    with app_on(simulator, tmp_path, broker_url=AMQP_URL, redis_url=redis_url) as built:
        _purge(built)  # leftovers of an aborted run must not be executed against this one
        try:
            yield built
        finally:
            _purge(built, delete=True)


def _purge(built: App, *, delete: bool = False) -> None:
    """Empty (or delete) the inboxpilot queue and its delay and dead-letter queues."""
    channel = built.broker.channel  # type: ignore[attr-defined]  # RabbitmqBroker
    for name in (QUEUE, f"{QUEUE}.DQ", f"{QUEUE}.XQ"):
        if delete:
            channel.queue_delete(name)
        else:
            built.broker.declare_queue(name, ensure=True)
            channel.queue_purge(name)


def test_new_conversation_assigned_once_over_rabbitmq(rabbit_app: App, simulator: SimulatorHandle) -> None:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    assert isinstance(rabbit_app.broker, RabbitmqBroker)
    conv = simulator.sim.new_conversation(channel="webchat")
    loop = leader_loop(rabbit_app)
    report = tick_and_drain(rabbit_app, loop)
    (key,) = [item.key for step in report.steps for item in step.items]
    entry = rabbit_app.runtime.ledger.get(key)
    assert entry is not None and entry.state == "done", entry

    # A second tick and a resync see the assigned conversation: nothing new is queued or sent.
    assert tick_and_drain(rabbit_app, loop).steps == []
    assert loop.resync_once().steps == []
    assigns = [
        call
        for call in simulator.sim.audit.applied("POST", BULK_ACTIONS)
        if conv["id"] in call.body.get("conversation_ids", [])
    ]
    assert len(assigns) == 1, f"expected one applied bulk call for the conversation, got {assigns}"
    assert simulator.sim.conversation(conv["id"])["owner_id"] == 201
