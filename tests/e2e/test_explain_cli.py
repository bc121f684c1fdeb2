"""`inboxpilot explain` against the simulator: reasons per rule, and what the ledger already holds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from tests.e2e.conftest import RuntimeFactory
from tests.support.dispatchers import Collector
from worker.cli import app
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle


@pytest.fixture(autouse=True)
def _empty_redis(redis_client: redis.Redis) -> None:
    """The CLI reads the shared Redis (ledger, watermark): start each test on an empty one."""


RULES = """
rules:
  - id: assign-new
    description: New conversations go to agent 201.
    when: {status: open, owner: unset}
    then:
      - assign: 201
"""


def _explain(simulator: SimulatorHandle, rules: Path, redis_url: str, *args: str) -> str:
    env = {
        "INBOXPILOT_API_URL": simulator.url,
        "INBOXPILOT_API_TOKEN": simulator.token,
        "INBOXPILOT_RULES_PATH": str(rules),
        "INBOXPILOT_REDIS_URL": redis_url,
    }
    result = CliRunner().invoke(app, ["explain", *args], env=env)
    assert result.exit_code == 0, result.output
    assert simulator.token not in result.output
    return result.stdout


def test_explain_shows_the_reasons_and_the_firing_key(
    simulator: SimulatorHandle, tmp_path: Path, redis_url: str
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    text = _explain(simulator, rules, redis_url, "-c", str(conv))
    assert "rule 'assign-new': MATCH - fires" in text
    assert "owner is unset" in text and f"assign-new:{conv}:c" in text


def test_explain_says_when_the_ledger_already_holds_the_firing(
    simulator: SimulatorHandle, tmp_path: Path, redis_url: str, make_runtime: RuntimeFactory
) -> None:
    if not redis_url:
        pytest.skip("explain reads the worker's ledger from a shared Redis: set REDIS_URL")
    conv = simulator.sim.new_conversation(channel="sms")["id"]
    Loop(make_runtime(RULES), Collector()).poll_once()  # the scheduler claims the firing
    rules = tmp_path / "rules.yaml"  # make_runtime wrote the same rules here
    text = _explain(simulator, rules, redis_url, "-c", str(conv))
    headline = re.search(r"rule 'assign-new': (.*)", text)
    assert headline and re.fullmatch(
        r"matches - already fired at \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(still pending\)", headline.group(1)
    ), text
    assert "MATCH - fires" not in text and "it does not fire again for this situation" in text
    assert text.rstrip().endswith(f"history: inboxpilot firings -c {conv}")
    data = json.loads(_explain(simulator, rules, redis_url, "-c", str(conv), "--json"))
    assert [(e["rule"], e["state"]) for e in data["ledger"]] == [("assign-new", "pending")]
    (rule,) = data["rules"]
    assert rule["fires"] is False and rule["already_fired_at"].endswith("(still pending)")
