"""The documented examples run against the shipped sandbox data: every pipeline/stage pair,
pause stage, AI assistant and predefined message they name exists in the simulator's seed
(a `move` to a stage the sandbox does not have validates, then fails with a 400), and the
rules/README example rule, run end to end on the sandbox, has no failed action."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.e2e._exec_helpers import flush_redis, plan_and_claim
from worker.execution.execute import execute
from worker.rules.book import Rulebook
from worker.rules.loader import load_texts
from worker.runtime import Runtime
from worker.simulator.seeding import PREDEFINED
from worker.simulator.store import AI_ASSISTANTS, PIPELINES
from worker.simulator.testing import SimulatorHandle

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "README.md",
    ROOT / "rules" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "rules").glob("*.yaml")),
    *sorted((ROOT / "rules" / "examples").glob("*.yaml")),
]
STAGE_PAIR = re.compile(r"pipeline: (\d+), stage: (\d+)")
PAUSE_STAGES = re.compile(r"stages: \[([\d, ]+)\]")
AI_ASSISTANT = re.compile(r"(?:assign_ai_assistant|ai_assistant): (?:\{id: )?(\d+)")
PREDEFINED_REF = re.compile(r"predefined: (?:(\d+)|\"([^\"]+)\")")
TUE_11_BERLIN = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)


def _found(pattern: re.Pattern[str]) -> list[tuple[str, tuple[str, ...]]]:
    return [
        (f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}", m.groups())
        for path in DOCS
        for text in [path.read_text()]
        for m in pattern.finditer(text)
    ]


def test_every_stage_pair_exists_in_the_sandbox() -> None:
    pairs = _found(STAGE_PAIR)
    assert len(pairs) >= 5  # the scan finds the examples at all
    wrong = [(where, p, s) for where, (p, s) in pairs if int(s) not in PIPELINES.get(int(p), ())]
    assert not wrong, f"stages the sandbox does not have ({PIPELINES}): {wrong}"


def test_every_pause_stage_ai_assistant_and_predefined_message_exists_in_the_sandbox() -> None:
    stages = {s for pipeline in PIPELINES.values() for s in pipeline}
    for where, (listed,) in _found(PAUSE_STAGES):
        assert {int(s) for s in listed.split(",")} <= stages, where
    for where, (assistant,) in _found(AI_ASSISTANT):
        assert int(assistant) in AI_ASSISTANTS, where
    titles = {title for title, _ in PREDEFINED}
    for where, (number, title) in _found(PREDEFINED_REF):
        assert (number and 1 <= int(number) <= len(PREDEFINED)) or title in titles, where


def _readme_rule() -> str:
    text = (ROOT / "rules" / "README.md").read_text()
    match = re.search(r"## A rule\n\n```yaml\n(.*?)```", text, re.S)
    assert match, "rules/README.md lost its example rule"
    return "rules:\n" + "\n".join(f"  {line}" for line in match.group(1).splitlines())


def test_the_readme_example_rule_runs_on_the_sandbox(simulator: SimulatorHandle, redis_url: str) -> None:
    shipped = [
        (p.name, p.read_text())
        for p in (ROOT / "rules").glob("*.yaml")
        if p.name in ("calendars.yaml", "roster.yaml")
    ]
    loaded = load_texts([*shipped, ("README.md", _readme_rule())], strict=True)
    assert loaded.ok, [e.format() for e in loaded.errors]
    flush_redis(redis_url)
    simulator.clock.set(TUE_11_BERLIN - timedelta(hours=3))
    conv = int(simulator.sim.new_conversation(channel="webchat")["id"])
    simulator.clock.set(TUE_11_BERLIN)
    settings = simulator.worker_settings(redis_url)
    runtime = Runtime.build(settings, clock=simulator.clock, rulebook=Rulebook.of(loaded.ruleset))
    try:
        steps = plan_and_claim(runtime, [conv])
        # The firing's three actions, in order: assign from the leads pool, move, note.
        assert [s.bulk.action if s.bulk else s.kind for s in steps] == ["assign", "move", "message"]
        for step in steps:
            execute(runtime, step)
        outcomes = {item.key: runtime.ledger.get(item.key) for step in steps for item in step.items}
    finally:
        runtime.close()
    assert all(e is not None and e.state == "done" for e in outcomes.values()), outcomes
    record = simulator.sim.conversation(conv)
    assert (record["pipeline_id"], record["pipeline_stage_id"]) == (1, 14)
    assert record["owner_id"] == 201
