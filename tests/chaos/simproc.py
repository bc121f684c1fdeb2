"""The simulator as its own process for chaos runs: `python -m tests.chaos.simproc --port P`.

Beyond `inboxpilot sandbox` it adds what a chaos driver needs over HTTP:

- slow answers: a seeded share of API requests is answered only after
  `slow_s` (the change is already applied: the client times out on a write
  that happened, the hardest case for exactly-once);
- forgetting idempotency keys: an API that does not honour them (or lost them),
  so only the worker's own read-back can stop a repeated send;
- `GET /__admin/chaos` counts what was injected, with the simulator's own faults.

Everything else (500s, commit-then-fail, 429 with Retry-After) is the
simulator's `FaultConfig`, set through `POST /__admin/faults`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.simulator import Simulator
from worker.simulator.app import admin


class SlowAnswers:
    """ASGI wrapper: delays the answer (not the change) of a seeded share of API requests."""

    def __init__(self, app: ASGIApp, seed: int) -> None:
        self.app = app
        self.rate = 0.0
        self.delay_s = 0.0
        self.count = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def _roll(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["path"].startswith("/__") or self.rate <= 0:
            return False
        with self._lock:
            hit = self._rng.random() < self.rate
            self.count += hit
            return hit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._roll(scope):
            await self.app(scope, receive, send)
            return
        delay_s = self.delay_s

        async def slow_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                await asyncio.sleep(delay_s)
            await send(message)

        await self.app(scope, receive, slow_send)


SLOW: SlowAnswers | None = None


@admin("GET", "chaos")
def _chaos_counts(sim: Simulator, request: Request, body: dict[str, Any]) -> Any:
    return {"faults": sim.fault_counts(), "slow": SLOW.count if SLOW else 0}


@admin("POST", "chaos")
def _chaos_set(sim: Simulator, request: Request, body: dict[str, Any]) -> Any:
    if SLOW is not None:
        SLOW.rate = float(body.get("slow_rate", SLOW.rate))
        SLOW.delay_s = float(body.get("slow_s", SLOW.delay_s))
    if body.get("forget_idempotency_keys"):
        sim.idempotency.clear()
    return _chaos_counts(sim, request, body)


def main(argv: list[str] | None = None) -> None:
    global SLOW
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--seed", type=int, default=0, help="fault RNG seed")
    parser.add_argument("--lenient", action="store_true", help="also serve the extension fields")
    args = parser.parse_args(argv)
    # Strict by default: the chaos run works on the documented record only.
    sim = Simulator(token=args.token, fault_seed=args.seed, strict=not args.lenient)
    SLOW = SlowAnswers(sim.app, args.seed + 1)
    uvicorn.run(SLOW, host="127.0.0.1", port=args.port, log_level="error", lifespan="off")


if __name__ == "__main__":
    main()
