"""Step kinds -> executors: a new kind of step is one registered function."""

from __future__ import annotations

from collections.abc import Callable

from worker.execution.runs import Run
from worker.rules.firing import Step
from worker.runtime import Runtime

Executor = Callable[[Runtime, Step, list[Run]], None]
EXECUTORS: dict[str, Executor] = {}


def executor(kind: str) -> Callable[[Executor], Executor]:
    def register(fn: Executor) -> Executor:
        if kind in EXECUTORS:
            raise ValueError(f"an executor for step kind {kind!r} is already registered")
        EXECUTORS[kind] = fn
        return fn

    return register
