"""The retry policy: for each kind of failure, who retries it, how often, and what the ledger records.

Each failure: who retries it, how often -> what the ledger records for the item.
The code below (`outcomes`, `left_for_redrive`) is this list.

- read 5xx / timeout / connect error: the API client, ``read_retries`` times with jitter
  (`worker/api/client.py`; connects also by httpx's transport) -> nothing yet (inside one attempt).
- write 5xx / timeout / connect error (``ApiError.retryable``): dramatiq's Retries, up to
  ``MAX_RETRIES`` with backoff ``MIN_BACKOFF_MS..MAX_BACKOFF_MS`` -> stays ``pending``; every
  attempt reads back and re-checks first (`worker/execution/recheck.py`).
- 429 ``RateLimited``: dramatiq, a quiet ``Retry`` after ``Retry-After``; the shared API pause
  holds every process meanwhile (`worker/state/api_pause.py`) -> stays ``pending``.
- any other 4xx: nobody -> ``failed`` "<status> <name>: <message>".
- template render error: nobody -> ``failed`` "template: ...".
- ``StepError`` / a request the client refuses to build: nobody -> ``failed`` with the reason.
- item busy (another delivery holds its lock): dramatiq, a quiet ``Retry`` after
  ``busy_retry_ms`` (`worker/state/locks.py`) -> unchanged.
- retries ran out on a transient error, Redis away, or AgeLimit dropped the message: the
  ledger's re-drive (scheduler), every ``redrive_after_s``, ``max_redrives`` times, never while
  it has not started and its message waits in the broker (not with a dead worker) -> stays ``pending``; then a
  verdict delivery reads back and re-checks: ``done`` / ``skipped`` when applied or moot, else
  ``failed`` "redrive_limit" without acting (`recheck.out_of_redrives`).
- retries ran out on a permanent error, or a malformed queue message (``throws=``): nobody
  (a dead letter, `worker/queue/dead_letters.py`) -> ``failed`` "dead_lettered".
- a claim whose message never ran (lost, worker killed): the ledger's re-drive, as above.
- a snapshot read failing at poll time: a due-timer reads it again on a following tick
  (after half its time unread, 1..60 s; `worker/state/unread.py`); one whose data is
  poisoned is quarantined first (`worker/state/quarantine.py`) -> not claimed until read.

An attempt is bounded by the actor time limit (setting ``actor_time_limit_s``,
dramatiq's TimeLimit, armed in every process by `ArmedTimeLimit`); the per-item
lock lives longer (`exec_lock_ttl_ms`) so it never expires under a running
attempt: the interrupt lands only when a blocking socket read returns, which the
HTTP timeout bounds. An interrupted attempt leaves its items pending and is
retried like a transient error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis
from dramatiq.errors import Retry
from dramatiq.middleware.time_limit import TimeLimitExceeded

from worker.api.errors import ApiError, RateLimited
from worker.config import DEFAULT_ACTOR_TIME_LIMIT_S, Settings
from worker.execution.runs import Run, finish, note_retry
from worker.rules.templates import TemplateRenderError
from worker.runtime import Runtime
from worker.state.locks import BUSY_RETRY_MS

MAX_RETRIES = 8
MIN_BACKOFF_MS = 1_000
MAX_BACKOFF_MS = 60_000
TIME_LIMIT_MS = int(DEFAULT_ACTOR_TIME_LIMIT_S * 1000)
MAX_AGE_MS = 3600 * 1000
# TimeLimit checks once a second; then the lock's own margin.
LOCK_MARGIN_MS = 5_000


def exec_lock_ttl_ms(time_limit_ms: int, http_timeout_s: float) -> int:
    """The per-item lock's TTL: one attempt at most, and a blocking read the limit cannot cut."""
    return time_limit_ms + int(http_timeout_s * 1000) + LOCK_MARGIN_MS


def settings_lock_ttl_ms(settings: Settings) -> int:
    """`exec_lock_ttl_ms` for these settings."""
    return exec_lock_ttl_ms(int(settings.actor_time_limit_s * 1000), settings.http_timeout_s)


# With the default settings (60 s limit, 10 s HTTP timeout): 75 s.
EXEC_LOCK_TTL_MS = exec_lock_ttl_ms(TIME_LIMIT_MS, 10.0)


@contextmanager
def outcomes(runtime: Runtime, runs: Sequence[Run]) -> Iterator[None]:
    """Turn errors into outcomes for the runs that have none yet (the table above)."""
    try:
        yield
    except RateLimited as exc:
        _retry_all(runs, exc)
        delay_ms = int((exc.retry_after_s or BUSY_RETRY_MS / 1000) * 1000)
        raise Retry(f"rate limited: retry after {delay_ms} ms", delay=delay_ms) from None
    except ApiError as exc:
        if exc.retryable:
            _retry_all(runs, exc)
            raise
        _fail_all(runtime, runs, f"{exc.status or 'error'} {exc.name}: {exc.message}")
    except TemplateRenderError as exc:
        _fail_all(runtime, runs, f"template: {exc}")
    except ValueError as exc:  # StepError, a request the client refuses to build: deterministic
        _fail_all(runtime, runs, str(exc))


def _retry_all(runs: Sequence[Run], exc: ApiError) -> None:
    for run in runs:
        if not run.finished and not run.retry_noted:
            run.retry_noted = True
            note_retry(run, exc)


def _fail_all(runtime: Runtime, runs: Sequence[Run], reason: str) -> None:
    for run in runs:
        finish(runtime, run, "failed", reason=reason)


def left_for_redrive(exception: BaseException | None) -> str | None:
    """Why a dead letter's items stay pending for the ledger's re-drive, or None to fail them."""
    if exception is None:
        return "age_limit"
    if isinstance(exception, Retry | redis.RedisError | TimeLimitExceeded):
        return "transient"  # a slow API is an outage too: the re-drive tries again later
    if isinstance(exception, ApiError) and exception.retryable:
        return "transient"
    return None
