"""The scheduler process: APScheduler 3 jobs gated on a Redis leader lease.

Jobs and why each is configured as it is:

- `lease` (every LEASE_TTL_S / 3): acquire or renew the leader lease. Not gated.
- `poll` (every `poll_interval_s`), `timers` (every `timer_pump_interval_s`),
  `resync` (every `resync_interval_s`), `redrive` (every 5 s), `rules` (every 5 s).
  Every job has `max_instances=1` (a slow tick is never run twice at once),
  `coalesce=True` (ticks missed while one ran collapse into one) and
  `misfire_grace_time` about its interval: APScheduler's default of 1 s silently
  drops a tick that starts late, which would delay an SLA action by a whole period.
- Only the leader runs the gated jobs. Several replicas may run for availability;
  when the leader stops renewing, a standby takes over within the lease TTL.
  The lease only makes concurrent leaders rare: the ledger claim is what makes a
  duplicate firing impossible (see `worker/state/ledger.py`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from worker.logs import get_logger
from worker.rules.book import RELOAD_INTERVAL_S
from worker.scheduling.tick import Loop
from worker.state.lease import LeaderLease

log = get_logger(__name__)
LEASE_NAME = "scheduler"
LEASE_TTL_S = 10.0
HOUSEKEEPING_INTERVAL_S = 5.0


class SchedulerService:
    def __init__(self, loop: Loop, *, lease_ttl_s: float = LEASE_TTL_S) -> None:
        runtime = loop.runtime
        self.loop = loop
        self.identity = f"scheduler-{uuid.uuid4().hex[:8]}"
        self.lease = LeaderLease(runtime.redis, LEASE_NAME, lease_ttl_s, runtime.clock)
        loop.owner = self.identity
        loop.fencing_token = lambda: self.lease.token
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self._add_jobs()

    def _add_jobs(self) -> None:
        settings = self.loop.runtime.settings
        self._every("lease", self.lease.ttl_s / 3, self.contend, gated=False)
        self._every("poll", settings.poll_interval_s, self.loop.poll_once)
        self._every("timers", settings.timer_pump_interval_s, self.loop.pump_once)
        self._every("resync", settings.resync_interval_s, self.loop.resync_once)
        self._every("redrive", HOUSEKEEPING_INTERVAL_S, self.loop.redrive_once)
        self._every("rules", RELOAD_INTERVAL_S, self.loop.runtime.rulebook.reload, gated=False)

    def _every(self, name: str, seconds: float, fn: Callable[[], Any], *, gated: bool = True) -> None:
        self._scheduler.add_job(
            self._job(name, fn, gated),
            "interval",
            seconds=seconds,
            id=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(seconds)),
        )

    def _job(self, name: str, fn: Callable[[], Any], gated: bool) -> Callable[[], None]:
        def run() -> None:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(job=name, scheduler=self.identity)
            if gated and not self.lease.is_leader:
                return
            try:
                fn()
            except Exception as exc:  # a failing tick is logged and retried next period
                log.error("job_failed", error=str(exc), error_type=type(exc).__name__)

        return run

    def contend(self) -> bool:
        """Acquire or renew the lease; log transitions."""
        was = self.lease.is_leader
        now = self.lease.try_acquire()
        if now and not was:
            log.info("became_leader", fence=self.lease.token)
        elif was and not now:
            log.warning("lost_leadership")
        return now

    def start(self) -> None:
        self.contend()
        self._scheduler.start()
        log.info("scheduler_started", leader=self.lease.is_leader)

    def shutdown(self) -> None:
        """Stop scheduling first, then give the lease up so a standby takes over at once.

        A tick still paging ends at its next page boundary (`Loop.stop`), so waiting
        for the running jobs takes one page, not the rest of the tick's budget.
        """
        self.loop.stop.set()
        self._scheduler.shutdown(wait=True)
        self.lease.release()
        log.info("scheduler_stopped")
