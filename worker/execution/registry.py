"""Step kinds -> executors: a new kind of step is one registered function."""

from __future__ import annotations

from collections.abc import Callable

from worker.execution.runs import Run
from worker.rules.firing import Step
from worker.rules.registry import Registry
from worker.runtime import Runtime

Executor = Callable[[Runtime, Step, list[Run]], None]
EXECUTORS: Registry[Executor] = Registry("step kind")
executor = EXECUTORS.register
