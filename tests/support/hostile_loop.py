"""A scheduler loop (leader, with a collecting dispatcher) on the hostile API, and log capture."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.e2e._exec_helpers import flush_redis
from tests.support.dispatchers import Collector
from tests.support.hostile_api import HostileHandle
from tests.support.leading import lead
from worker.clock import Clock
from worker.logs import configure_logging
from worker.rules.book import Rulebook
from worker.rules.loader import load_texts
from worker.runtime import Runtime
from worker.scheduling.tick import Loop

MATCH_OPEN = """
rules:
  - id: assign-open
    once: per_conversation
    when: {status: open}
    then:
      - assign: 201
"""


@contextmanager
def hostile_loop(
    hostile: HostileHandle,
    redis_url: str,
    rules: str = MATCH_OPEN,
    *,
    clock: Clock | None = None,
    **settings: Any,
) -> Iterator[tuple[Loop, Collector]]:
    """`Loop` built like production on the hostile API, holding the leader lease.

    The worker shares the server's clock unless given its own `clock`."""
    flush_redis(redis_url)
    options = {"read_retries": 0, **settings}
    ruleset = load_texts([("t.yaml", rules)], strict=True).ruleset
    runtime = Runtime.build(
        hostile.worker_settings(redis_url, **options),
        clock=clock or hostile.clock,
        rulebook=Rulebook.of(ruleset),
    )
    collector = Collector()
    loop = Loop(runtime, collector)
    lead(loop, 30)
    try:
        yield loop, collector
    finally:
        runtime.close()


def capture_logs() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    return stream


def events(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == name]
