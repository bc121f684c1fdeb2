"""Hostile input from rule authors and customers (issue 13): nothing they write can freeze,
blind or fool the worker.

Regexes written in rules run on RE2 (linear time): a customer message cannot make a
rule pattern backtrack for ever, and `validate` rejects what RE2 cannot run.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from worker.api.models import Contact, Conversation, Message
from worker.cli import app
from worker.rules import RuleSet, Snapshot, evaluate, load_texts
from worker.simulator.testing import SimulatorHandle

NOW = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)
# `(a+)+$` backtracks exponentially on Python's `re` against `aaa...ab`: 2**50000 paths.
EVIL = "(a+)+$"
EVIL_TEXT = "a" * 50_000 + "b"
# A guard, not a timing assertion: on a backtracking engine this test would never end.
ENDS = pytest.mark.timeout(30)


def _rules(when: str) -> str:
    return textwrap.dedent(
        f"""\
        rules:
          - id: evil
            when:
              {when}
            then:
              - note: "matched"
        """
    )


def _load(when: str) -> RuleSet:
    result = load_texts([("rules.yaml", _rules(when))])
    assert result.ok, [e.format() for e in result.errors]
    return result.ruleset


def _inbound(text: str) -> Message:
    return Message.model_validate(
        {"_id": "m1", "conversation_id": 1, "direction": "inbound", "message_text": text,
         "created_at": NOW - timedelta(minutes=1)}
    )  # fmt: skip


# --- 1. ReDoS -------------------------------------------------------------------------------


@ENDS
@pytest.mark.parametrize(("text", "expected"), [(EVIL_TEXT, False), ("a" * 50_000, True)])
def test_a_catastrophic_message_regex_ends_with_the_right_answer(text: str, expected: bool) -> None:
    ruleset = _load(f"message_text: {{regex: '{EVIL}'}}")
    snapshot = Snapshot(Conversation(id=1, channel="sms"), messages=[_inbound(text)])
    evaluation = evaluate(ruleset, snapshot, NOW, explain=True)
    assert bool(evaluation.matches) is expected


@ENDS
def test_a_catastrophic_contact_regex_ends_with_the_right_answer() -> None:
    ruleset = _load(f"contact: {{field: name, regex: '{EVIL}'}}")
    snapshot = Snapshot(Conversation(id=1, channel="sms"), contact=Contact(id=2, name=EVIL_TEXT))
    assert not evaluate(ruleset, snapshot, NOW).matches


@pytest.mark.parametrize(
    ("pattern", "hint"),
    [
        (r"(a)\1", "backreference"),
        ("refund(?= now)", "lookaround"),
        ("(?<!no )refund", "lookaround"),
        ("(?<=please )help", "lookaround"),
    ],
)
@pytest.mark.parametrize(
    "condition", ["message_text: {{regex: '{p}'}}", "contact: {{field: name, regex: '{p}'}}"]
)
def test_validate_rejects_what_the_linear_engine_cannot_run(pattern: str, hint: str, condition: str) -> None:
    result = load_texts([("rules.yaml", _rules(condition.format(p=pattern)))])
    assert result.ruleset.rules == ()
    (error,) = result.errors
    assert (error.file, error.line) == ("rules.yaml", 4), error.format()
    assert error.column > 1 and "RE2" in error.message and hint in error.message, error.format()


def test_keywords_keep_unicode_word_boundaries() -> None:
    """Keywords are escaped literals (no backtracking risk): they keep Python's Unicode `\\b`."""
    ruleset = _load("message_text: [café]")
    for text, expected in [("un CAFÉ noir", True), ("cafés", False)]:
        snapshot = Snapshot(Conversation(id=1, channel="sms"), messages=[_inbound(text)])
        assert bool(evaluate(ruleset, snapshot, NOW).matches) is expected, text


def _cli(simulator: SimulatorHandle, rules: Path, redis_url: str, *args: str) -> str:
    env = {
        "INBOXPILOT_API_URL": simulator.url,
        "INBOXPILOT_API_TOKEN": simulator.token,
        "INBOXPILOT_RULES_PATH": str(rules),
        "INBOXPILOT_REDIS_URL": redis_url,
    }
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


@ENDS
def test_explain_and_plan_end_on_a_catastrophic_customer_message(
    simulator: SimulatorHandle, tmp_path: Path, redis_url: str
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(_rules(f"message_text: {{regex: '{EVIL}'}}"))
    bad = simulator.sim.new_conversation(channel="sms", text=EVIL_TEXT)["id"]
    good = simulator.sim.new_conversation(channel="sms", text="a" * 50_000)["id"]

    assert "rule 'evil': no match" in _cli(simulator, rules, redis_url, "explain", "-c", str(bad))
    assert "rule 'evil': MATCH" in _cli(simulator, rules, redis_url, "explain", "-c", str(good))
    planned = _cli(simulator, rules, redis_url, "plan", "--full")
    assert f"conversation {good} " in planned and f"conversation {bad} " not in planned
