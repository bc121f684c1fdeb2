"""`inboxpilot run`: the scheduler, the workers, or both in one process."""

from __future__ import annotations

import os
import signal
import sys
import threading
from enum import StrEnum
from typing import TYPE_CHECKING

import typer

from worker.cli import app
from worker.cli.common import rulebook_or_exit, settings_or_exit
from worker.cli.failures import EXIT_PORT, Failure
from worker.logs import get_logger

if TYPE_CHECKING:
    import dramatiq

    from worker.app import App
    from worker.config import Settings
    from worker.health import HealthServer
    from worker.scheduling.scheduler import SchedulerService

log = get_logger("worker.run")
# Workers finish the message in hand within the actor time limit; wait a little longer.
STOP_MARGIN_S = 15.0
PREFLIGHT_TIMEOUT_S = 5.0


class Role(StrEnum):
    all = "all"
    scheduler = "scheduler"
    worker = "worker"


@app.command("run")
def run(
    role: Role = typer.Option(Role.all, "--role", help="all = scheduler and worker threads in one process"),
    threads: int = typer.Option(8, "--threads", min=1, max=256, help="Worker threads per process"),
    processes: int = typer.Option(1, "--processes", min=1, max=64, help="Worker processes (role worker)"),
) -> None:
    """Run the worker until SIGTERM/Ctrl-C; in-flight actions finish before it exits."""
    settings = settings_or_exit(needs_token=True, service=True)
    if not settings.redis_url:
        if role is not Role.all:
            typer.echo(
                "inboxpilot: --role scheduler/worker needs INBOXPILOT_REDIS_URL (shared state)", err=True
            )
            raise typer.Exit(2)
        log.warning(
            "embedded_redis",
            detail="no INBOXPILOT_REDIS_URL: the ledger, timers and queue live in this process "
            "and do not survive a restart",
        )
    else:
        _redis_answers(settings.redis_url)
    if role is Role.worker and processes > 1:
        _exec_dramatiq(processes, threads)
    rules = rulebook_or_exit(settings.rules_path)

    from worker.app import App
    from worker.rules.book import RELOAD_INTERVAL_S

    _api_answers(settings)
    built = App.build(settings, rulebook=rules)
    try:
        health = _health(built, settings.metrics_port)
    except BaseException:
        built.close()
        raise
    scheduler = built.scheduler() if role in (Role.all, Role.scheduler) else None
    worker = built.worker(threads) if role in (Role.all, Role.worker) else None
    if scheduler is not None and health is not None:
        health.add_check("leader", lambda: (True, "leader" if scheduler.lease.is_leader else "standby"))
    stop = _stop_event()
    if worker is not None:
        worker.start()
    if scheduler is not None:
        scheduler.start()  # its own job reloads the rules
    else:
        built.reload_rules_every(RELOAD_INTERVAL_S, stop)
    log.info("running", role=role.value, threads=threads if worker else 0)
    stop.wait()
    log.info("stopping", role=role.value)
    _stop_together(scheduler, worker, settings.actor_time_limit_s + STOP_MARGIN_S)
    if health is not None:
        health.stop()
    built.close()


def _stop_together(
    scheduler: SchedulerService | None, worker: dramatiq.Worker | None, timeout_s: float
) -> None:
    """Stop polling and stop taking messages at once, then wait for both.

    One after the other, a backlog kept the worker consuming while the scheduler's
    tick wound down. Now: the tick ends at its next page or conversation, worker
    threads finish the message in hand (the actor time limit bounds it) and take no
    other, and the messages they had prefetched go back to the queue.
    """
    if scheduler is not None:
        scheduler.loop.stop.set()
    stopping = threading.Thread(target=scheduler.shutdown, name="scheduler-stop") if scheduler else None
    if stopping is not None:
        stopping.start()
    if worker is not None:
        worker.stop(timeout=int(timeout_s * 1000))
    if stopping is not None:
        stopping.join()


def _redis_answers(url: str) -> None:
    """A Redis that does not answer at start is a setup error (exit 4), not something to wait out."""
    from worker.state.redis_conn import connect

    connect(url).ping()


def _api_answers(settings: Settings) -> None:
    """One cheap find before starting: a setup the API refuses ends here with one line (exit 3).

    An API that is only down or busy (refused, timeout, 429, 5xx) is waited out like any
    outage later on: the scheduler retries and /readyz says so. The probe has its own
    client: one attempt, a short timeout, no shared pause to wait on, so a standby that
    starts during an outage is ready to take over at once.
    """
    from worker.api import errors
    from worker.api.client import ApiClient
    from worker.api.services import CONVERSATIONS

    timeout_s = min(settings.http_timeout_s, PREFLIGHT_TIMEOUT_S)
    client = ApiClient.from_settings(settings, read_retries=0, timeout_s=timeout_s)
    try:
        client.find_page(CONVERSATIONS, {"organization_id": client.organization_id, "$limit": 1})
    except (
        errors.NotAuthenticated,
        errors.Forbidden,
        errors.NotFound,
        errors.Redirected,
        errors.MalformedResponse,
    ):
        raise  # a wrong token, organization or URL: waiting will not fix it
    except errors.ApiError as exc:
        log.warning("api_unavailable_at_start", error=str(exc), detail="waiting for it like any outage")
    finally:
        client.close()


def _health(built: App, port: int) -> HealthServer | None:
    if not port:
        return None
    try:
        return built.health_server(port)
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise Failure(
            EXIT_PORT, f"cannot listen on 0.0.0.0:{port} (INBOXPILOT_METRICS_PORT): {reason}"
        ) from None


def _stop_event() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def _exec_dramatiq(processes: int, threads: int) -> None:
    """Hand over to dramatiq's own multi-process worker (same environment)."""
    args = [
        sys.executable, "-m", "dramatiq", "worker.dramatiq_entry",
        "--processes", str(processes), "--threads", str(threads),
        "--queues", "inboxpilot", "--skip-logging",
    ]  # fmt: skip
    os.execv(sys.executable, args)
