"""Scenario options: `pytest tests/scenarios --days 14 --rate 80 --seed 3` runs a bigger week.

(The options exist when pytest starts in or below tests/scenarios; from the
repository root use SCENARIO_DAYS / SCENARIO_RATE / SCENARIO_SEED, or
`python -m tests.scenarios.week --days 14 --rate 80`.)
"""

from __future__ import annotations

import os

import pytest

DEFAULTS = {"days": 7.0, "rate": 25.0, "seed": 1.0}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("scenarios")
    group.addoption("--days", type=float, default=None, help="simulated days (default 7)")
    group.addoption("--rate", type=float, default=None, help="mean arrivals per day (default 25)")
    group.addoption("--seed", type=int, default=None, help="traffic seed (default 1)")


def option(config: pytest.Config, name: str) -> float:
    value = config.getoption(f"--{name}", default=None)
    if value is None:
        value = os.environ.get(f"SCENARIO_{name.upper()}")
    return float(value) if value is not None else DEFAULTS[name]
