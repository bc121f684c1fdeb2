"""The runtime: every long-lived object a process needs, built once from settings.

The scheduler and the actors both work from a `Runtime` (actors get theirs from the
broker's `RuntimeProvider` middleware); tests build one with a
fake clock and a transport pointed at the simulator. Nothing here holds logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from worker.api.client import ApiClient
from worker.api.services import Services
from worker.clock import Clock, SystemClock
from worker.config import Settings
from worker.metrics import observe_api_backoff, observe_api_response
from worker.rules.book import Rulebook
from worker.state.api_pause import SharedPause
from worker.state.ledger import Ledger
from worker.state.observed import Observations
from worker.state.redis_conn import connect
from worker.state.sent import SentMessages
from worker.state.timers import DueTimers


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    redis: redis.Redis
    api: Services
    ledger: Ledger
    timers: DueTimers
    rulebook: Rulebook
    observed: Observations
    sent: SentMessages

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        clock: Clock | None = None,
        transport: httpx.BaseTransport | None = None,
        rulebook: Rulebook | None = None,
        redrive_after_s: float | None = None,
    ) -> Runtime:
        clock = clock or SystemClock()
        client = connect(settings.redis_url)
        return cls(
            settings=settings,
            clock=clock,
            redis=client,
            api=Services(
                ApiClient.from_settings(
                    settings,
                    clock=clock,
                    transport=transport,
                    on_response=observe_api_response,
                    on_backoff=observe_api_backoff,
                    gate=SharedPause(client, clock),
                )
            ),
            ledger=Ledger(
                client,
                clock,
                ttl_s=settings.ledger_ttl_s,
                redrive_after_s=redrive_after_s or settings.redrive_after_s,
            ),
            timers=DueTimers(client),
            rulebook=rulebook or Rulebook(Path(settings.rules_path)),
            observed=Observations(client, clock, ttl_s=settings.ledger_ttl_s),
            sent=SentMessages(client, ttl_s=settings.ledger_ttl_s),
        )

    def close(self) -> None:
        self.api.client.close()
