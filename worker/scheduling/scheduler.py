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

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobEvent
from apscheduler.schedulers.background import BackgroundScheduler

from worker.logs import get_logger
from worker.rules.book import RELOAD_INTERVAL_S
from worker.scheduling.tick import Loop
from worker.state.lease import LeaderLease

log = get_logger(__name__)
SKIPPED_TICK = "maximum number of running instances reached"
LEASE_NAME = "scheduler"
LEASE_TTL_S = 10.0
HOUSEKEEPING_INTERVAL_S = 5.0


class _NoSkipNoise(logging.Filter):
    """Drops APScheduler's warning for a tick skipped because the previous one still runs.

    With max_instances=1 that skip is by design, and a long first poll (a backlog of
    changes) made it repeat every poll interval; `SchedulerService` says it once instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return SKIPPED_TICK not in record.getMessage()


_NO_SKIP_NOISE = _NoSkipNoise()


class SchedulerService:
    def __init__(self, loop: Loop, *, lease_ttl_s: float = LEASE_TTL_S) -> None:
        runtime = loop.runtime
        self.loop = loop
        self.identity = f"scheduler-{uuid.uuid4().hex[:8]}"
        self.lease = LeaderLease(runtime.redis, LEASE_NAME, lease_ttl_s, runtime.clock)
        loop.owner = self.identity
        loop.fencing_token = lambda: self.lease.token
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self._running_since: dict[str, float] = {}  # job -> monotonic start of its running tick
        self._told: set[str] = set()  # jobs whose running tick was already reported as long
        self._lock = threading.Lock()
        logging.getLogger("apscheduler.scheduler").addFilter(_NO_SKIP_NOISE)
        self._scheduler.add_listener(self._still_running, EVENT_JOB_MAX_INSTANCES)
        self._add_jobs()

    def _add_jobs(self) -> None:
        settings = self.loop.runtime.settings
        self._every("lease", self.lease.ttl_s / 3, self.contend, gated=False)
        self._every("poll", settings.poll_interval_s, self.loop.poll_once)
        self._every("timers", settings.timer_pump_interval_s, self.loop.pump_once)
        self._every("resync", settings.resync_interval_s, self.loop.resync_once)
        self._every("redrive", HOUSEKEEPING_INTERVAL_S, self.loop.redrive_once)
        self._every("rules", RELOAD_INTERVAL_S, self.loop.reload_rules, gated=False)

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
            with self._lock:
                self._running_since[name] = time.monotonic()
            try:
                fn()
            except Exception as exc:  # a failing tick is logged and retried next period
                log.error("job_failed", error=str(exc), error_type=type(exc).__name__)
            finally:
                with self._lock:
                    self._running_since.pop(name, None)
                    self._told.discard(name)

        return run

    def _still_running(self, event: JobEvent) -> None:
        """A tick came due while the last one still runs: say so once per long tick."""
        with self._lock:
            started = self._running_since.get(event.job_id)
            if started is None or event.job_id in self._told:
                return
            self._told.add(event.job_id)
        log.info(
            "tick_still_running",
            job=event.job_id,
            running_s=round(time.monotonic() - started, 1),
            detail="still reading (a first poll reads every change since the watermark, page by page); "
            "the next ticks wait until it ends",
        )

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
