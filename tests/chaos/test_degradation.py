"""Degradation: the API rate-limiting or down, Redis down.

- A 429 or an API that stops answering pauses *every* process (one Redis key),
  reads wait it out, writes are not sent until it ends.
- Due-timers survive an API outage and are acted on in deadline order after it.
- A firing retried past dramatiq's retries during an outage stays pending for
  the ledger's re-drive instead of being failed.
- Without Redis the worker acts on nothing (no ledger, no action) and carries on
  by itself once Redis is back.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import redis
from dramatiq.errors import Retry

from tests.chaos.harness import RedisServer
from tests.e2e._exec_helpers import applied_posts, flush_redis, plan_and_claim, runtime_on
from tests.support.dispatchers import Collector
from tests.support.leading import lead
from worker.api.client import ApiClient
from worker.api.errors import GeneralError, RateLimited, TransportError
from worker.api.services import SEND_PATHS
from worker.clock import FakeClock
from worker.execution.execute import execute
from worker.execution.policy import left_for_redrive
from worker.runtime import Runtime
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle
from worker.state.api_pause import FAILURE_THRESHOLD, PAUSE_KEY, REFRESH_S, SharedPause

EMPTY_PAGE = {"total": 0, "limit": 50, "skip": 0, "data": []}
URL = "http://api.test"


class Upstream:
    """A MockTransport handler: answers `script` in turn (then 200s), recording each call."""

    def __init__(self, clock: FakeClock, *script: httpx.Response | Exception) -> None:
        self.clock = clock
        self.script = list(script)
        self.calls: list[tuple[str, float]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, self.clock.now().timestamp()))
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return httpx.Response(200, json=EMPTY_PAGE if request.method == "GET" else {"id": 1})


def client(upstream: Upstream, redis_client: redis.Redis, *, read_retries: int = 3) -> ApiClient:
    """One worker process's client: its own bucket and httpx pool, the shared pause in Redis."""
    return ApiClient(
        URL,
        "tok-degradation",
        1,
        transport=httpx.MockTransport(upstream),
        clock=upstream.clock,
        read_retries=read_retries,
        gate=SharedPause(redis_client, upstream.clock),
    )


def test_a_429_pauses_every_process(redis_client: redis.Redis) -> None:
    clock = FakeClock()
    upstream = Upstream(clock, httpx.Response(429, headers={"Retry-After": "30"}, json={}))
    a, b = client(upstream, redis_client, read_retries=0), client(upstream, redis_client)
    started = clock.now().timestamp()

    with pytest.raises(RateLimited):
        a.find_page("/conversations")  # told to wait 30 s

    with pytest.raises(RateLimited) as paused:
        b.create("/conversation-messages-sms", {"conversation_id": 1})
    assert paused.value.name == "SharedPause" and paused.value.retry_after_s == pytest.approx(30)
    assert len(upstream.calls) == 1  # the write was not sent

    b.find_page("/conversations")  # a read waits the pause out, then goes
    assert len(upstream.calls) == 2
    assert upstream.calls[1][1] - started >= 30


def test_an_api_that_stops_answering_pauses_every_process(redis_client: redis.Redis) -> None:
    clock = FakeClock()
    refused = [httpx.ConnectError("connection refused") for _ in range(FAILURE_THRESHOLD)]
    upstream = Upstream(clock, *refused)
    a, b = client(upstream, redis_client, read_retries=0), client(upstream, redis_client, read_retries=0)

    for _ in range(FAILURE_THRESHOLD):
        with pytest.raises(TransportError):
            a.find_page("/conversations")
    assert redis_client.get(PAUSE_KEY) is not None
    with pytest.raises(RateLimited):
        b.find_page("/conversations")
    assert len(upstream.calls) == FAILURE_THRESHOLD  # b did not add to the load

    clock.advance(2)
    b.find_page("/conversations")  # back: one answer resets the failure count
    assert len(upstream.calls) == FAILURE_THRESHOLD + 1


def test_500s_alone_do_not_pause(redis_client: redis.Redis) -> None:
    clock = FakeClock()
    upstream = Upstream(clock, *[httpx.Response(500, json={}) for _ in range(10)])
    a = client(upstream, redis_client, read_retries=0)
    for _ in range(10):
        with pytest.raises(GeneralError):
            a.find_page("/conversations")
    assert redis_client.get(PAUSE_KEY) is None


class Ticks:
    """An injected monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_pause_set_elsewhere_is_honoured_within_the_refresh_bound(redis_client: redis.Redis) -> None:
    clock, ticks = FakeClock(), Ticks()
    here = SharedPause(redis_client, clock, monotonic=ticks)
    elsewhere = SharedPause(redis_client, clock)
    assert here.wait_s() == 0  # read the key: no pause

    elsewhere.pause(30, "rate_limited")
    ticks.now = REFRESH_S * 0.9
    assert here.wait_s() == 0  # the key is not read again inside the bound (the CPU saved)
    ticks.now = REFRESH_S
    assert here.wait_s() == pytest.approx(30)  # honoured once the bound is reached


def test_a_pause_set_here_holds_here_at_once_even_without_redis(redis_client: redis.Redis) -> None:
    clock, ticks = FakeClock(), Ticks()
    here = SharedPause(redis_client, clock, monotonic=ticks)
    assert here.wait_s() == 0
    here.observe(429, 5.0)
    assert here.wait_s() == pytest.approx(5)  # no refresh needed for our own 429

    broken = SharedPause(redis.Redis(port=1, socket_connect_timeout=0.1), clock, monotonic=ticks)
    broken.observe(429, 5.0)  # Redis refused the shared pause ...
    assert broken.wait_s() == pytest.approx(5)  # ... this process still holds off


def test_outage_errors_leave_dead_letters_for_the_redrive() -> None:
    assert left_for_redrive(GeneralError("boom", status=500)) == "transient"
    assert left_for_redrive(TransportError("timed out")) == "transient"
    assert left_for_redrive(Retry("busy", delay=1000)) == "transient"
    assert left_for_redrive(redis.ConnectionError("gone")) == "transient"
    assert left_for_redrive(None) == "age_limit"
    assert left_for_redrive(KeyError("a bug")) is None


# --- due-timers through an API outage ------------------------------------------------------

WAITING = """
rules:
  - id: chase
    once: per_inbound_message
    when: {status: open, waiting_for_reply: {longer_than: 10m}}
    then:
      - note: "waiting {{ conversation.id }}"
"""


@pytest.fixture
def loop(simulator: SimulatorHandle, redis_url: str) -> Iterator[tuple[Loop, Collector]]:
    flush_redis(redis_url)
    with runtime_on(simulator, redis_url, WAITING) as runtime:
        collector = Collector()
        the_loop = Loop(runtime, collector)
        lead(the_loop, 3600)
        yield the_loop, collector


def test_due_timers_survive_an_outage_and_catch_up_in_deadline_order(
    simulator: SimulatorHandle, loop: tuple[Loop, Collector]
) -> None:
    the_loop, collector = loop
    ids = []
    for _ in range(4):
        ids.append(int(simulator.sim.new_conversation(channel="webchat")["id"]))
        simulator.clock.advance(timedelta(minutes=1))
    the_loop.poll_once()
    assert len(the_loop.runtime.timers) == 4 and collector.steps == []

    simulator.sim.set_faults(error_rate=1.0)  # the API is down past every due time
    simulator.clock.advance(timedelta(minutes=30))
    with pytest.raises(GeneralError):
        the_loop.pump_once()
    assert len(the_loop.runtime.timers) == 4  # none lost

    simulator.sim.set_faults(error_rate=0.0)
    for _ in range(2):
        the_loop.pump_once(limit=2)
    acted = [item.conversation_id for step in collector.steps for item in step.items]
    assert acted == ids  # earliest deadline first
    assert len(the_loop.runtime.timers) == 0


def test_no_redrive_while_the_api_is_paused(simulator: SimulatorHandle, loop: tuple[Loop, Collector]) -> None:
    the_loop, _ = loop
    conv = int(simulator.sim.new_conversation(channel="webchat")["id"])
    runtime = the_loop.runtime
    runtime.ledger.claim(f"chase:{conv}:x#0", {"kind": "message", "items": []}, rule_id="chase")
    later = runtime.clock.now() + timedelta(seconds=runtime.ledger.redrive_after_s + 1)
    simulator.clock.set(later)
    the_loop.api_pause.pause(60, "test")
    assert the_loop.redrive_once() == 0
    simulator.clock.advance(61)
    assert the_loop.redrive_once() == 1


# --- Redis down ------------------------------------------------------------------------------

ACK = """
rules:
  - id: ack
    once: per_inbound_message
    when: {status: open}
    then:
      - reply: "Thanks, we got your message."
"""


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server: the test stops and restarts its own server")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.proc.stop()


def test_without_redis_nothing_is_done_and_it_resumes_by_itself(
    simulator: SimulatorHandle, own_redis: RedisServer
) -> None:
    with ExitStack() as stack:
        runtime: Runtime = stack.enter_context(runtime_on(simulator, own_redis.url, ACK))
        the_loop = Loop(runtime, Collector())
        conv = int(simulator.sim.new_conversation(channel="webchat")["id"])
        (step,) = plan_and_claim(runtime, [conv])

        own_redis.proc.kill()  # Redis crashes (its append-only file keeps the claim)
        with pytest.raises(redis.ConnectionError):
            execute(runtime, step)
        with pytest.raises(redis.ConnectionError):
            the_loop.poll_once()
        assert applied_posts(simulator, SEND_PATHS["webchat"]) == []  # no action without the ledger

        own_redis.start()  # back, same objects, no restart of the worker
        execute(runtime, step)
        assert len(applied_posts(simulator, SEND_PATHS["webchat"])) == 1
        entry = runtime.ledger.get(step.items[0].key)
        assert entry is not None and entry.state == "done"
