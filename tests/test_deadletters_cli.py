"""`inboxpilot dead-letters`: list, retry (ledger reopened first), drop."""

from __future__ import annotations

import json
from collections.abc import Iterator

import dramatiq
import pytest
from typer.testing import CliRunner

from tests.e2e._exec_helpers import flush_redis
from worker.cli import app
from worker.clock import FakeClock
from worker.config import Settings
from worker.queue.actors import QUEUE, Actors, declare_actors
from worker.queue.broker import build_broker
from worker.queue.dead_letters import item_keys, list_dead_letters
from worker.queue.dead_letters import reopen_and_retry as retry
from worker.state.ledger import Ledger
from worker.state.redis_conn import connect

KEY = "assign-new:7:c#0"
JOIN_TIMEOUT_MS = 20_000


@pytest.fixture
def broker(redis_url: str) -> Iterator[dramatiq.Broker]:
    flush_redis(redis_url)
    built = build_broker(Settings(redis_url=redis_url), set_global=False)
    yield built
    built.close()


@pytest.fixture
def ledger(redis_url: str, clock: FakeClock) -> Ledger:
    return Ledger(connect(redis_url), clock, ttl_s=3600)


def drain(broker: dramatiq.Broker) -> None:
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.join(QUEUE, timeout=JOIN_TIMEOUT_MS)
    finally:
        worker.stop()


def dead_letter_a_step(broker: dramatiq.Broker, ledger: Ledger) -> Actors:
    """A claimed firing whose message cannot be decoded: dead-lettered, failed in the ledger."""
    actors = declare_actors(broker, max_retries=0)
    assert ledger.claim(KEY, {"kind": "bulk"})
    actors.bulk_action.send({"kind": "bulk", "items": [{"key": KEY}]}, firing_keys=[KEY])
    drain(broker)
    ledger.mark_failed(KEY, "dead_lettered")  # what App's on_dead_letter callback records
    return actors


def test_retry_reopens_the_ledger_then_requeues(broker: dramatiq.Broker, ledger: Ledger) -> None:
    dead_letter_a_step(broker, ledger)
    (letter,) = list_dead_letters(broker)
    assert item_keys(letter) == [KEY]
    assert not retry(broker, ledger, "no-such-id")

    assert retry(broker, ledger, letter.id)
    entry = ledger.get(KEY)
    assert entry is not None and entry.state == "pending"
    assert list_dead_letters(broker) == []
    drain(broker)  # the same message runs again (and, still undecodable, dies again)
    assert [d.message_id for d in list_dead_letters(broker)] == [letter.message_id]


def test_cli_list_and_drop(broker: dramatiq.Broker, ledger: Ledger, redis_url: str) -> None:
    if not redis_url:
        pytest.skip("the dead-letters command needs a shared Redis: set REDIS_URL")
    dead_letter_a_step(broker, ledger)
    runner = CliRunner()
    env = {"INBOXPILOT_REDIS_URL": redis_url}
    listed = runner.invoke(app, ["dead-letters", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["actor"], row["firing_keys"]) == ("bulk_action", [KEY])

    dropped = runner.invoke(app, ["dead-letters", "drop", row["id"]], env=env)
    assert dropped.exit_code == 0 and "1 dead letter(s) dropped" in dropped.stdout
    again = runner.invoke(app, ["dead-letters", "drop", row["id"]], env=env)
    assert again.exit_code == 1 and "no dead letter with id" in again.output
    assert list_dead_letters(broker) == []


def test_cli_refuses_the_embedded_redis() -> None:
    result = CliRunner().invoke(app, ["dead-letters", "list"], env={"INBOXPILOT_REDIS_URL": ""})
    assert result.exit_code == 2
    assert "needs INBOXPILOT_REDIS_URL" in result.output


def test_cli_retry_all_and_drop_all(broker: dramatiq.Broker, ledger: Ledger, redis_url: str) -> None:
    if not redis_url:
        pytest.skip("the dead-letters command needs a shared Redis: set REDIS_URL")
    dead_letter_a_step(broker, ledger)
    runner = CliRunner()
    env = {"INBOXPILOT_REDIS_URL": redis_url}
    retried = runner.invoke(app, ["dead-letters", "retry", "--all"], env=env)
    assert retried.exit_code == 0 and "1 dead letter(s) retried" in retried.stdout, retried.output
    entry = ledger.get(KEY)
    assert entry is not None and entry.state == "pending"
    drain(broker)  # still undecodable: it dies again
    assert len(list_dead_letters(broker)) == 1
    dropped = runner.invoke(app, ["dead-letters", "drop", "--all"], env=env)
    assert dropped.exit_code == 0 and "1 dead letter(s) dropped" in dropped.stdout, dropped.output
    assert list_dead_letters(broker) == []


@pytest.mark.parametrize("args", [[], ["x-1", "--all"]], ids=["neither", "both"])
def test_cli_retry_needs_ids_or_all(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["dead-letters", "retry", *args], env={"INBOXPILOT_REDIS_URL": ""})
    assert result.exit_code == 2
    assert result.stderr.strip() == "inboxpilot: give dead-letter ids or --all (one of the two)"
