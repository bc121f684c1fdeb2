"""Scheduling: the leader lease, due-timers and the poll watermark (Redis-backed).

The scheduler jobs (poll, timer pump, resync) build on these; each module
documents the Redis keys it owns.
"""

from __future__ import annotations

from worker.scheduling.leader import LeaderLease, lease_key
from worker.scheduling.timers import DueTimer, DueTimers
from worker.scheduling.watermark import (
    Watermark,
    WatermarkState,
    advance_state,
    filter_new_records,
)

__all__ = [
    "DueTimer",
    "DueTimers",
    "LeaderLease",
    "Watermark",
    "WatermarkState",
    "advance_state",
    "filter_new_records",
    "lease_key",
]
