"""Hostile rule files (issue 13, findings 4 and 12): alias bombs, huge files, symlinks that
lead nowhere, control characters; and a rules folder is parsed again only when it changes.
"""

from __future__ import annotations

import os
import re
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from worker.api.models import Conversation, Message
from worker.cli import app
from worker.rules import Snapshot, evaluate, load_texts
from worker.rules.book import Rulebook
from worker.rules.explain import format_explanation
from worker.rules.loader import MAX_ALIAS_NODES, MAX_RULE_FILE_BYTES, MAX_YAML_DEPTH, load_rules

GOOD = textwrap.dedent(
    """\
    rules:
      - id: greet
        when: {status: open}
        then:
          - note: "hello"
    """
)
# A guard, not a timing assertion: expanding the aliases would not end in any useful time.
ENDS = pytest.mark.timeout(30)


def alias_bomb(levels: int, width: int = 10) -> str:
    """`a` is `width` strings; every next level is `width` aliases of the one before."""
    lines = ["anchors:", f"  - &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"  - &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n" + GOOD


# --- 4. billion laughs ---------------------------------------------------------------------


@ENDS
@pytest.mark.parametrize("levels", [5, 9])  # 10**5 nodes: over the budget; 10**9: a bomb
def test_an_alias_bomb_is_refused_at_the_alias_that_passes_the_budget(levels: int) -> None:
    result = load_texts([("bomb.yaml", alias_bomb(levels))])
    assert result.ruleset.rules == ()
    (error,) = result.errors
    assert error.file == "bomb.yaml" and 3 <= error.line <= levels + 1 and error.column > 1, error.format()
    assert f"more than {MAX_ALIAS_NODES}" in error.message, error.format()


def test_a_few_aliases_are_fine() -> None:
    shared = textwrap.dedent(
        """\
        calendars:
          support:
            timezone: Europe/Berlin
            hours:
              mon: &day ["09:00-12:00", "13:00-18:00"]
              tue: *day
              wed: *day
        rules:
          - id: greet
            when: &open {status: open}
            then: [{note: hi}]
          - id: greet-again
            when: *open
            then: [{note: hi again}]
        """
    )
    result = load_texts([("shared.yaml", shared)])
    assert result.ok, [e.format() for e in result.errors]
    assert [r.id for r in result.ruleset.rules] == ["greet", "greet-again"]


@ENDS
def test_a_recursive_alias_is_a_located_error() -> None:
    text = "anchors: &a\n  - x\n  - *a\n" + GOOD
    result = load_texts([("loop.yaml", text)])
    (error,) = result.errors
    assert (error.line, error.column) == (3, 5) and "contains it" in error.message, error.format()


def test_deep_nesting_is_a_located_error() -> None:
    text = GOOD + "calendars: " + "[" * 5000 + "]" * 5000 + "\n"
    (error,) = load_texts([("deep.yaml", text)]).errors
    assert error.line == 6 and error.column > 1 and f"nested deeper than {MAX_YAML_DEPTH}" in error.message, (
        error.format()
    )


def test_a_file_over_the_size_limit_is_not_parsed(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(GOOD + "# padding\n" * (MAX_RULE_FILE_BYTES // 10 + 1))
    result = load_rules([tmp_path])
    (error,) = result.errors
    assert (error.file, error.line, error.column) == (str(big), 1, 1)
    assert "larger than" in error.message and str(MAX_RULE_FILE_BYTES) in error.message.replace(",", "")
    assert load_texts([("big.yaml", big.read_text())]).errors[0].message == error.message


@ENDS
def test_a_bomb_dropped_into_a_live_folder_keeps_the_last_good_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    book = Rulebook(tmp_path)
    good = book.ruleset

    path.write_text(alias_bomb(9))
    assert book.reload() is False
    assert book.ruleset is good
    assert book.errors and "alias" in book.errors[0].message


def test_a_folder_is_parsed_again_only_when_its_files_change(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    book = Rulebook(tmp_path)
    parses = book.parses

    for _ in range(3):
        assert book.reload() is False
    assert book.parses == parses  # nothing changed: nothing parsed

    path.write_text(GOOD.replace('"hello"', '"hello again"'))
    assert book.reload() is True and book.parses == parses + 1
    (tmp_path / "more.yaml").write_text(GOOD.replace("greet", "other"))
    assert book.reload() is True and book.parses == parses + 2
    (tmp_path / "more.yaml").unlink()
    assert book.reload() is True and book.parses == parses + 3

    path.write_text("rules: [")  # broken: parsed once, reported, then left alone
    assert book.reload() is False and book.errors
    assert book.reload() is False and book.parses == parses + 4


# --- 12. symlinks and control characters -----------------------------------------------------


def test_dangling_and_looping_symlinks_are_located_errors(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    os.symlink(tmp_path / "gone.yaml", tmp_path / "dangling.yaml")
    os.symlink(tmp_path / "loop.yaml", tmp_path / "loop.yaml")
    result = load_rules([tmp_path])
    found = {Path(e.file).name: e.message for e in result.errors}
    assert set(found) == {"dangling.yaml", "loop.yaml"}, found
    assert "broken symbolic link" in found["dangling.yaml"] and "gone.yaml" in found["dangling.yaml"]
    assert "symbolic link loop" in found["loop.yaml"]
    assert [r.id for r in result.ruleset.rules] == ["greet"]


RAW = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def test_control_characters_never_reach_the_terminal(tmp_path: Path) -> None:
    evil = "refund\u202e\x1b[2J"
    text = GOOD.replace("id: greet", f'id: "{evil.encode("unicode_escape").decode()}"')
    text += 'calendars:\n  "cal\u202e\\e[31m": {timezone: UTC}\n'
    path = tmp_path / "rules\u202e.yaml"
    path.write_text(text)

    result = load_rules([path])
    messages = [e.format() for e in result.errors]
    assert len(messages) == 2, messages
    assert all(not RAW.search(m) and "\\u202e" in m for m in messages), messages
    assert any("control or invisible" in m for m in messages), messages

    output = CliRunner().invoke(app, ["validate", str(path)]).output
    assert "\\u202e" in output and not RAW.search(output), output


def test_explain_escapes_what_customers_and_rule_authors_wrote() -> None:
    rules = GOOD.replace("{status: open}", '{message_text: [refund, "x\\u202e"]}')
    rules = rules.replace("    when:", '    description: "Line one\\nline \\e[31mtwo"\n    when:')
    ruleset = load_texts([("r.yaml", rules)]).ruleset
    now = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)
    message = Message.model_validate(
        {"_id": "m1", "conversation_id": 1, "direction": "inbound", "created_at": now - timedelta(minutes=1),
         "message_text": "\x1b]0;pwned\x07\x1b[2J refund\u202e now"}
    )  # fmt: skip
    evaluation = evaluate(
        ruleset, Snapshot(Conversation(id=1, channel="sms"), messages=[message]), now, explain=True
    )

    text = format_explanation(evaluation, "text")

    assert "rule 'greet': MATCH" in text
    assert "\\x1b]0;pwned" in text and "\\u202e" in text and not RAW.search(text), text
    assert "  Line one\n  line \\x1b[31mtwo\n" in text  # a description keeps its lines
