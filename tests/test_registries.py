"""The registries agree: every action users can write is planned, every planned step kind executed."""

from __future__ import annotations

import pytest

from worker.execution import execute  # noqa: F401  (registers the built-in executors)
from worker.execution.registry import EXECUTORS
from worker.rules.actions import ACTIONS
from worker.rules.registry import RegistryError
from worker.scheduling.planning import MERGERS, PLANNERS

# The step kinds planners produce (planning.py) and their executors run.
STEP_KINDS = {"bulk", "message", "automation", "tags"}


def test_every_action_type_has_a_planner() -> None:
    assert set(ACTIONS) == set(PLANNERS)


def test_every_step_kind_has_an_executor_and_mergers_only_for_known_kinds() -> None:
    assert set(EXECUTORS) >= STEP_KINDS
    assert set(MERGERS) <= set(EXECUTORS)


def test_a_second_registration_is_refused() -> None:
    with pytest.raises(RegistryError, match="already registered"):
        PLANNERS.register("assign")(lambda action, item, ctx: None)
