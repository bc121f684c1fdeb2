"""Bad rule files: any text gives a rule set or located errors, and a running worker keeps
its last good rules (and says so: log + `inboxpilot_rules_load_errors`) until the file is fixed.

`tests/rules/test_fuzz.py` mutates the shipped files; this adds arbitrary text
and arbitrary YAML structures (well-formed YAML of the wrong shape).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from worker.logs import configure_logging
from worker.metrics import REGISTRY
from worker.rules import load_texts
from worker.rules.book import Rulebook

LOCATED = re.compile(r"^[^:]+:\d+:\d+: .+")
WORDS = st.sampled_from(
    ["rules", "id", "when", "then", "once", "status", "open", "owner", "assign", "reply", "note",
     "calendars", "agents", "pools", "priority", "silent_for", "15m", "pool", "all", "any", "not",
     "{{ contact.name }}", "{{ nope }}", "per_conversation", "-1", "1e309", "", "é"]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), WORDS, st.text(max_size=8)
)
TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(WORDS, children, max_size=4)),
    max_leaves=25,
)


def assert_located(text: str) -> None:
    result = load_texts([("fuzz.yaml", text)])
    for error in result.errors:
        assert error.file == "fuzz.yaml"
        assert error.line >= 1 and error.column >= 1
        assert LOCATED.match(error.format()), error.format()
    for rule in result.ruleset.rules:
        assert rule.when and rule.then


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.text(max_size=300))
def test_arbitrary_text_gives_rules_or_located_errors(text: str) -> None:
    assert_located(text)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(TREES)
def test_yaml_of_any_shape_gives_rules_or_located_errors(tree: object) -> None:
    assert_located(json.dumps(tree, ensure_ascii=False))  # JSON is YAML


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.dictionaries(WORDS, TREES, max_size=4))
def test_a_rule_of_any_shape_gives_a_rule_or_located_errors(rule: dict[str, object]) -> None:
    assert_located(json.dumps({"rules": [{"id": "r", **rule}]}, ensure_ascii=False, indent=1))


# --- a running worker and a broken edit ------------------------------------------------------

GOOD = """
rules:
  - id: greet
    when: {status: open}
    then:
      - note: "hello"
"""
BROKEN = """
rules:
  - id: greet
    when: {status: opne}
    then:
      - note: "hello {{ contact.nmae }}"
"""
FIXED = GOOD.replace('"hello"', '"hello again"')


def load_errors_metric() -> float:
    text = generate_latest(REGISTRY).decode()
    match = re.search(r"^inboxpilot_rules_load_errors (\S+)$", text, re.MULTILINE)
    assert match, "inboxpilot_rules_load_errors is not exported"
    return float(match.group(1))


def test_broken_edit_keeps_the_last_good_rules_until_fixed(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    book = Rulebook(path)
    good = book.ruleset

    path.write_text(BROKEN)
    assert book.reload() is False
    assert book.ruleset is good  # still acting on the last good rules
    assert book.errors and all(LOCATED.match(e.format()) for e in book.errors)
    assert load_errors_metric() == len(book.errors) > 0
    logged = [json.loads(line) for line in stream.getvalue().splitlines()]
    kept = [r for r in logged if r["event"] == "rules_invalid_kept_last_good"]
    assert kept and any("rules.yaml:4" in r["error"] for r in kept)

    assert book.reload() is False  # still broken: still exposed, not logged again
    assert load_errors_metric() > 0

    path.write_text(FIXED)
    assert book.reload() is True
    assert book.errors == ()
    assert load_errors_metric() == 0
    assert book.ruleset.rules[0].then != good.rules[0].then


def test_unreadable_rules_are_an_error_too(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    book = Rulebook(path)
    path.write_bytes(b"\xff\xfe rules: [")
    assert book.reload() is False
    assert book.errors and "cannot read" in book.errors[0].message
    assert book.ruleset.rules[0].id == "greet"
