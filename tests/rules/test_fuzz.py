"""Fuzz: mutate the shipped rule files; every result is a rule set or located errors, never a crash."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.rules import load_texts

ROOT = Path(__file__).resolve().parents[2] / "rules"
FILES = sorted([*ROOT.glob("*.yaml"), *ROOT.glob("examples/*.yaml")])
LOCATED = re.compile(r"^[^:]+:\d+:\d+: .+")
JUNK = [
    "", ":", "-", "- ", "{", "}", "[", "]", "'", '"', "!!", "!!python/object:os.system", "&a", "*a",
    "*missing",
    "? ", "|", ">", "%YAML 1.1", "---", "...", "15 minutes", "-1", "0", "1e309", "null", "~", "true", "yes",
    "owner", "status", "assign", "pool", "calendar", "all", "any", "not", "when", "then", "id", "\t", "    ",
    "{{ contact.x }}", "(", "<<: *a", "2026-02-30", "99:99-00:00", "é", "\\u0000",
]  # fmt: skip
TOKEN = re.compile(r"[\w.@:+-]+|\S")


@st.composite
def mutated(draw: st.DrawFn, path: Path) -> str:
    lines = path.read_text().splitlines()
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if not lines:
            break
        i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "token", "indent", "insert"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "indent":
            lines[i] = draw(st.sampled_from(["", " ", "  ", "\t"])) + lines[i].lstrip(" ") * draw(
                st.sampled_from([1, 1, 0])
            )
        elif op == "insert":
            lines.insert(i, draw(st.sampled_from(JUNK)))
        else:
            tokens = list(TOKEN.finditer(lines[i]))
            if tokens:
                m = draw(st.sampled_from(tokens))
                pool = JUNK + [t.group() for t in TOKEN.finditer("\n".join(lines))][:200]
                lines[i] = lines[i][: m.start()] + draw(st.sampled_from(pool)) + lines[i][m.end() :]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_mutations_give_a_ruleset_or_located_errors(path: Path) -> None:
    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(mutated(path))
    def check(text: str) -> None:
        result = load_texts([(path.name, text)])
        lines = text.count("\n") + 1
        for error in result.errors:
            assert error.file == path.name
            assert 1 <= error.line <= lines + 1, error.format()
            assert error.column >= 1
            assert LOCATED.match(error.format()), error.format()
        assert isinstance(result.ruleset.rules, tuple)
        for rule in result.ruleset.rules:
            assert rule.then and rule.when

    check()
