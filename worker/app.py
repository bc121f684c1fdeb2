"""Assembly: settings -> runtime, broker, actors, loop, scheduler. No logic of its own.

`App.build` is the one place a process wires the parts together; the CLI's
`run` and `demo`, the dramatiq entry module and the end-to-end tests all use it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import dramatiq
import httpx

from worker.api.errors import ApiError
from worker.api.services import CONVERSATIONS
from worker.clock import Clock
from worker.config import Settings
from worker.health import HealthServer
from worker.logs import get_logger
from worker.queue.actors import QUEUE, Actors, declare_actors
from worker.queue.broker import broker_queues, build_broker
from worker.rules.book import Rulebook
from worker.runtime import Runtime
from worker.scheduling.scheduler import SchedulerService
from worker.scheduling.tick import Loop

log = get_logger(__name__)


class ApiProbe:
    """Readiness of the API: one cheap find, remembered for a while so probes do not load the API."""

    def __init__(self, runtime: Runtime, ttl_s: float = 15.0) -> None:
        self._runtime = runtime
        self._ttl_s = ttl_s
        self._last: tuple[float, bool, str] | None = None

    def __call__(self) -> tuple[bool, str]:
        now = time.monotonic()
        if self._last is None or now - self._last[0] > self._ttl_s:
            try:
                client = self._runtime.api.client
                client.find_page(CONVERSATIONS, {"organization_id": client.organization_id, "$limit": 1})
                self._last = (now, True, "reachable")
            except ApiError as exc:
                self._last = (now, False, f"{type(exc).__name__}: {exc}"[:200])
        return self._last[1], self._last[2]


@dataclass
class App:
    runtime: Runtime
    broker: dramatiq.Broker
    actors: Actors

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        clock: Clock | None = None,
        transport: httpx.BaseTransport | None = None,
        rulebook: Rulebook | None = None,
        redrive_after_s: float | None = None,
    ) -> App:
        runtime = Runtime.build(
            settings, clock=clock, transport=transport, rulebook=rulebook, redrive_after_s=redrive_after_s
        )
        broker = build_broker(settings, runtime=runtime)
        # The re-drive tells a message queued behind a backlog from a lost one by asking the broker.
        runtime.ledger.queued_in = broker_queues(settings, QUEUE)
        return cls(runtime, broker, declare_actors(broker))

    def loop(self) -> Loop:
        return Loop(self.runtime, self.actors)

    def scheduler(self) -> SchedulerService:
        return SchedulerService(self.loop(), lease_ttl_s=self.runtime.settings.lease_ttl_s)

    def worker(self, threads: int, *, poll_timeout_ms: int = 1000) -> dramatiq.Worker:
        """An in-process worker; `poll_timeout_ms` bounds how long `stop()` waits for idle threads."""
        return dramatiq.Worker(
            self.broker, queues={QUEUE}, worker_threads=threads, worker_timeout=poll_timeout_ms
        )

    def reload_rules_every(self, seconds: float, stop: threading.Event) -> threading.Thread:
        """Keep this process's rules current (worker processes re-check firings against them).

        The scheduler reloads its rules in a job; a process without one calls this.
        """

        def reload() -> None:
            while not stop.wait(seconds):
                try:
                    self.runtime.rulebook.reload()
                except Exception as exc:  # never let a reload error kill the thread
                    log.error("rules_reload_failed", error=str(exc))

        thread = threading.Thread(target=reload, name="rules-reload", daemon=True)
        thread.start()
        return thread

    def health_server(self, port: int) -> HealthServer:
        """/healthz, /readyz (Redis, API, rules) and /metrics on `port`, started."""
        runtime = self.runtime
        server = HealthServer(port=port)
        server.add_check("redis", lambda: (bool(runtime.redis.ping()), "PING"))
        server.add_check(
            "rules",
            lambda: (not runtime.rulebook.errors, f"{len(runtime.rulebook.ruleset.rules)} rules active"),
        )
        server.add_check("api", ApiProbe(runtime))
        return server.start()

    def close(self) -> None:
        self.broker.close()
        self.runtime.close()
