"""The API token never leaks: not in a log line, an exception, a metric, a dead letter,
the ledger, Redis or the API's audit log -- on the worst paths.

A leaky upstream echoes the `Authorization` header into its error answers (some
proxies do), so the token is *offered* everywhere: read retries and their debug
lines, a 500 on a send that dramatiq retries until it dead-letters, a 400 whose
message becomes the ledger's failure reason, a non-JSON answer. Then every sink
is searched for the recognisable token.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import dramatiq
import httpx
import pytest
import redis
from prometheus_client import generate_latest

from tests.e2e._exec_helpers import flush_redis, plan_and_claim
from worker.api.errors import ApiError
from worker.api.services import SEND_PATHS
from worker.clock import FakeClock
from worker.config import load_settings
from worker.logs import configure_logging
from worker.metrics import REGISTRY
from worker.queue.actors import QUEUE, declare_actors
from worker.queue.broker import build_broker
from worker.queue.dead_letters import list_dead_letters
from worker.rules.book import Rulebook
from worker.rules.loader import load_texts
from worker.runtime import Runtime
from worker.simulator.testing import SimulatorHandle, served_simulator

TOKEN = "SECRET-tok-7d3a91c2e5f04b"
SEND = SEND_PATHS["webchat"]
RULES = """
rules:
  - id: ack
    once: per_inbound_message
    when: {status: open}
    then:
      - reply: "Thanks, we got your message."
  - id: triage
    when: {status: open}
    then:
      - note: "triage {{ conversation.id }}"
"""


class LeakyUpstream(httpx.HTTPTransport):
    """Real HTTP to the simulator, but errors that quote our own Authorization header back."""

    def __init__(self) -> None:
        super().__init__()
        self.reads_failing = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization", "")
        if request.method == "POST" and request.url.path == SEND:
            body = json.loads(request.content)
            if body.get("message_type") == "note":
                return _feathers(400, "BadRequest", f"bad note, you sent {auth}", {"auth": auth})
            return _feathers(
                500, "GeneralError", f"upstream refused {auth}", {"headers": {"authorization": auth}}
            )
        if request.method == "GET" and self.reads_failing > 0:
            self.reads_failing -= 1
            return httpx.Response(502, text=f"<html>bad gateway for {auth} token={TOKEN}</html>")
        return super().handle_request(request)


def _feathers(status: int, name: str, message: str, data: Any) -> httpx.Response:
    return httpx.Response(status, json={"name": name, "message": message, "code": status, "data": data})


@pytest.fixture
def logs() -> io.StringIO:
    stream = io.StringIO()
    # No `secrets=`: the client must register its own token (the worst case: a caller forgot).
    configure_logging("DEBUG", "json", stream=stream)
    return stream


@pytest.fixture
def served() -> Iterator[SimulatorHandle]:
    with served_simulator(FakeClock(), TOKEN) as handle:
        yield handle


@pytest.fixture
def runtime(served: SimulatorHandle, redis_url: str) -> Iterator[Runtime]:
    flush_redis(redis_url)
    settings = load_settings(
        api_url=served.url,
        api_token=TOKEN,
        redis_url=redis_url,
        rate_limit_per_s=10_000,
        rate_burst=10_000,
        read_retries=2,
        log_level="DEBUG",
    )
    ruleset = load_texts([("t.yaml", RULES)], strict=True).ruleset
    built = Runtime.build(
        settings, clock=served.clock, transport=LeakyUpstream(), rulebook=Rulebook.of(ruleset)
    )
    yield built
    built.close()


READERS: dict[str, Any] = {
    "string": lambda c, k: c.get(k),
    "hash": lambda c, k: c.hgetall(k),
    "list": lambda c, k: c.lrange(k, 0, -1),
    "set": lambda c, k: c.smembers(k),
    "zset": lambda c, k: c.zrange(k, 0, -1, withscores=True),
    "stream": lambda c, k: c.xrange(k),
}


def redis_dump(client: redis.Redis) -> str:
    """Every key and value in the database, as text."""
    parts: list[str] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        parts.append(f"{key!r} {kind} {READERS[kind](client, key)!r}")
    return "\n".join(parts)


def test_the_token_leaks_nowhere_on_the_worst_paths(
    served: SimulatorHandle, runtime: Runtime, logs: io.StringIO
) -> None:
    leaky = runtime.api.client._http._transport  # the test's own transport
    assert isinstance(leaky, LeakyUpstream)
    errors: list[BaseException] = []

    # Reads: 502s quoting the token, retried with backoff (debug and info lines), then given up.
    conv = int(served.sim.new_conversation(channel="webchat")["id"])
    leaky.reads_failing = 10
    with pytest.raises(ApiError) as read_error:
        runtime.api.conversations.get(conv)
    errors.append(read_error.value)
    leaky.reads_failing = 0

    # Actions: a 500 retried by dramatiq until dead-lettered, a 400 failed with its reason.
    with ExitStack() as stack:
        broker = build_broker(runtime.settings, runtime=runtime, set_global=False)
        stack.callback(broker.close)
        actors = declare_actors(broker, max_retries=1)
        worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
        worker.start()
        stack.callback(worker.stop)
        steps = plan_and_claim(runtime, [conv])
        assert {s.action.get("type") for s in steps} == {"reply", "note"}
        for step in steps:
            actors.enqueue(step)
        broker.join(QUEUE, timeout=30_000)
        letters = list_dead_letters(broker, QUEUE)

    entries = [runtime.ledger.get(item.key) for step in steps for item in step.items]
    # The paths really were taken: the 400 failed the note; the 500s outlasted the reply's
    # retries, so it was dead-lettered and left pending for the ledger's re-drive.
    assert sorted(e.state for e in entries if e) == ["failed", "pending"]
    assert letters, "the retried send was not dead-lettered"

    sinks = {
        "log lines": logs.getvalue(),
        "exceptions": "\n".join(f"{e}\n{e!r}\n{e.args!r}" for e in errors),
        "metrics": generate_latest(REGISTRY).decode(),
        "dead letters": "\n".join(repr(letter) for letter in letters),
        "ledger": "\n".join(repr(e) for e in entries),
        "redis": redis_dump(runtime.redis),
        "api audit log": json.dumps([e.to_dict() for e in served.sim.audit.entries()], default=str),
        "client repr": repr(runtime.api.client) + repr(runtime.settings),
    }
    assert "api_retry_scheduled" in sinks["log lines"] and "api_request" in sinks["log lines"]
    assert "BadRequest" in sinks["ledger"]
    leaks = [name for name, text in sinks.items() if TOKEN in text]
    assert leaks == [], f"the token leaked into: {leaks}"
