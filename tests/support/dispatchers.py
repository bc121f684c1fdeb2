"""Dispatchers for tests: what the loop hands its claimed steps to instead of a dramatiq queue."""

from __future__ import annotations

from worker.execution.execute import execute
from worker.rules.firing import Step
from worker.runtime import Runtime

# In-process dramatiq workers in tests poll this often, so stopping one takes ~0.1 s, not 1-2 s.
TEST_POLL_TIMEOUT_MS = 50


class Collector:
    """Keeps the claimed steps instead of queueing them."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def enqueue(self, step: Step) -> None:
        self.steps.append(step)

    def conversations(self) -> set[int]:
        return {item.conversation_id for step in self.steps for item in step.items}


class Inline(Collector):
    """Executes each claimed step at once, as an actor would; `hold` keeps them queued instead."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self.hold = False

    def enqueue(self, step: Step) -> None:
        super().enqueue(step)
        if not self.hold:
            execute(self.runtime, step, self.enqueue)  # a firing's next action comes back here
