"""A loop that leads: it holds the scheduler lease, so its ticks may move the watermark."""

from __future__ import annotations

from worker.scheduling.tick import Loop
from worker.state.lease import LeaderLease


def lead(loop: Loop, ttl_s: float = 3600) -> Loop:
    """Make `loop` the scheduler leader for `ttl_s` seconds of its runtime's clock."""
    runtime = loop.runtime
    lease = LeaderLease(runtime.redis, "scheduler", ttl_s, runtime.clock)
    assert lease.try_acquire(), "another loop holds the scheduler lease"
    loop.fencing_token = lambda: lease.token
    return loop


def tick(loop: Loop) -> None:
    """One incremental poll, then the due timers: what the scheduler's jobs do each interval."""
    loop.poll_once()
    loop.pump_once()
