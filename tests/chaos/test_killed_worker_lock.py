"""A worker SIGKILLed mid-task leaves its per-item lock to expire: the firing must still happen.

Found by the chaos run: a redelivery that found the item busy retried every 2 s,
spent all of dramatiq's retries while the dead worker's lock (75 s) still stood,
and was dead-lettered; the ledger then marked a firing that never ran as failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import redis
from dramatiq.errors import Retry

from tests.e2e._exec_helpers import applied_posts, flush_redis, plan_and_claim, runtime_on
from worker.api.services import SEND_PATHS
from worker.execution.execute import execute
from worker.execution.policy import EXEC_LOCK_TTL_MS, MAX_RETRIES
from worker.runtime import Runtime
from worker.simulator.testing import SimulatorHandle
from worker.state.locks import BUSY_RETRY_MS, EXEC_LOCK_PREFIX, busy_retry_ms

ACK = """
rules:
  - id: ack
    once: per_inbound_message
    when: {status: open}
    then:
      - reply: "Thanks, we got your message."
"""


@pytest.fixture
def runtime(simulator: SimulatorHandle, redis_url: str) -> Iterator[Runtime]:
    flush_redis(redis_url)
    with ExitStack() as stack:
        yield stack.enter_context(runtime_on(simulator, redis_url, ACK))


def test_busy_delivery_waits_for_the_dead_holders_lock(simulator: SimulatorHandle, runtime: Runtime) -> None:
    conv = int(simulator.sim.new_conversation(channel="webchat")["id"])
    (step,) = plan_and_claim(runtime, [conv])
    lock = EXEC_LOCK_PREFIX + step.items[0].key
    runtime.ledger.begin_attempt(step.items[0].key)  # the killed worker's attempt, 45 s ago
    runtime.redis.set(lock, "killed-worker", px=EXEC_LOCK_TTL_MS - 45_000)

    with pytest.raises(Retry) as raised:
        execute(runtime, step)

    delay_ms = raised.value.delay
    assert delay_ms is not None  # until the lock is gone, not 2 s
    assert EXEC_LOCK_TTL_MS - 45_000 - 1_000 < delay_ms <= EXEC_LOCK_TTL_MS - 45_000 + 1_000
    assert applied_posts(simulator, SEND_PATHS["webchat"]) == []

    runtime.redis.delete(lock)  # the TTL ran out
    execute(runtime, step)
    assert len(applied_posts(simulator, SEND_PATHS["webchat"])) == 1
    entry = runtime.ledger.get(step.items[0].key)
    assert entry is not None and entry.state == "done" and entry.attempts == 2


def test_a_fresh_lock_is_retried_soon(simulator: SimulatorHandle, runtime: Runtime) -> None:
    """A holder that just started is probably alive and about to finish."""
    conv = int(simulator.sim.new_conversation(channel="webchat")["id"])
    (step,) = plan_and_claim(runtime, [conv])
    runtime.redis.set(EXEC_LOCK_PREFIX + step.items[0].key, "other", px=EXEC_LOCK_TTL_MS)
    with pytest.raises(Retry) as raised:
        execute(runtime, step)
    assert raised.value.delay == BUSY_RETRY_MS


def test_retries_outlast_a_dead_holders_lock(redis_client: redis.Redis) -> None:
    """Killed right after taking the lock: the waits add up past its TTL within the retries."""
    elapsed_ms, retries = 0, 0
    while elapsed_ms < EXEC_LOCK_TTL_MS:
        redis_client.set("lock", "dead", px=EXEC_LOCK_TTL_MS - elapsed_ms)
        elapsed_ms += busy_retry_ms(redis_client, "lock", EXEC_LOCK_TTL_MS)
        retries += 1
    assert retries <= MAX_RETRIES - 2  # room left for ordinary errors
