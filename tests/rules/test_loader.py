"""The loader: located errors, stage-by-stage loading, folders, strict mode."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from worker.rules import LoadResult, RulesInvalid, load_rules, load_texts

BROKEN = """\
- id: good
  when: {status: open}
  then: [{note: fine}]
- id: bad-duration
  when:
    all:
      - status: open
      - waiting_for_reply: {longer_than: 15 minutes please}
  then: [{note: x}]
- id: bad-key
  priorty: 3
  when: {status: open}
  then: [{note: x}]
"""


def test_errors_are_located_and_the_good_rule_still_loads() -> None:
    result = load_texts([("f.yaml", BROKEN)])
    assert [r.id for r in result.ruleset.rules] == ["good"]
    lines = [e.format() for e in result.errors]
    assert lines == [
        "f.yaml:8:42: rule 'bad-duration': when.all[1].waiting_for_reply.longer_than: '15 minutes please' "
        "is not a duration (a number with a unit, like 90s, 15m, 2h, 1d, 1w or 1h30m)",
        "f.yaml:11:3: rule 'bad-key': unknown key 'priorty' (did you mean 'priority'? "
        "allowed: id, description, enabled, priority, once, max_per_conversation, max_per_hour, "
        "skip_team_started)",
    ]


def test_strict_raises_with_every_error() -> None:
    with pytest.raises(RulesInvalid) as info:
        load_texts([("f.yaml", BROKEN)], strict=True)
    assert len(info.value.errors) == 2


def test_yaml_syntax_error_is_located() -> None:
    result = load_texts([("f.yaml", "- id: a\n  when: {status: open\n  then: []\n")])
    (error,) = result.errors
    assert error.file == "f.yaml" and error.line >= 2 and error.column >= 1
    assert "YAML syntax error" in error.message


def test_duplicate_yaml_keys_are_located() -> None:
    result = load_texts([("f.yaml", "- id: a\n  id: b\n  when: {status: open}\n  then: [unassign]\n")])
    assert result.errors and result.errors[0].line == 2


def test_duplicate_ids_across_files() -> None:
    rule = "- id: same\n  when: {status: open}\n  then: [{note: x}]\n"
    result = load_texts([("a.yaml", rule), ("b.yaml", "# first line\n" + rule)])
    (error,) = result.errors
    assert error.format() == "b.yaml:2:7: rule 'same': id: duplicate rule id (first defined at a.yaml:1)"
    assert len(result.ruleset.rules) == 1


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            "- id: r\n  when: {in_business_hours: nope}\n  then: [unassign]\n",
            (2, 29),
            "no calendar named 'nope'",
        ),
        (
            "- id: r\n  when: {contact: {field: x, regex: '('}}\n  then: [unassign]\n",
            (2, 37),
            "regex does not compile",
        ),
        ("- id: r\n  when: {chanel: sms}\n  then: [unassign]\n", (2, 10), "did you mean 'channel'"),
        ("- id: r\n  when: {status: open}\n  then: [{set_status: open}]\n", (3, 23), "a loop"),
        ("- id: r\n  when: {owner: unset}\n  then: [unassign]\n", (3, 10), "a loop"),
        ("- id: r\n  when: {tags: vip}\n  then: [{tag: vip}]\n", (3, 16), "a loop"),
        ("- id: r\n  when: {tags: {all: [a, b]}}\n  then: [{tag: [b]}]\n", (3, 16), "a loop"),
        ("- id: r\n  when: {tags: {none: [x]}}\n  then: [{untag: x}]\n", (3, 18), "a loop"),
        ("- id: r\n  when: {status: open}\n  then: [{tag: ' vip'}]\n", (3, 16), "not a tag name"),
        ("- id: r\n  when: {status: open}\n  then: [{tag: []}]\n", (3, 16), "at least 1 item"),
        ("- id: R!\n  when: {status: open}\n  then: [unassign]\n", (1, 7), "should match pattern"),
        ("- id: r\n  when: []\n  then: [unassign]\n", (2, 9), "empty condition list"),
        ("- id: r\n  when: {status: open}\n", (1, 3), "missing required key 'then'"),
        ("- id: r\n  when: {any: open}\n  then: [unassign]\n", (2, 15), "non-empty list"),
        ("- id: r\n  priority: high\n  when: {status: open}\n  then: [unassign]\n", (2, 13), "valid integer"),
        ("- just a string\n", (1, 3), "a rule is a mapping"),
        ("rulez: []\n", (1, 1), "unknown section 'rulez'"),
    ],
)
def test_error_locations(text: str, where: tuple[int, int], message: str) -> None:
    result = load_texts([("f.yaml", text)])
    assert result.errors, text
    first = result.errors[0]
    assert (first.line, first.column) == where, first.format()
    assert message in first.message, first.format()


def test_roster_errors(load_yaml: Callable[..., LoadResult]) -> None:
    text = """\
    agents:
      - {id: 5, calendar: nowhere}
    pools:
      p: {members: [77]}
    rules:
      - id: r
        when: {status: open}
        then: [{assign: {pool: p}}]
    """
    result = load_yaml(text)
    messages = [e.message for e in result.errors]
    assert any("no calendar named 'nowhere'" in m for m in messages)
    assert any("not in the roster" in m for m in messages)
    assert any("no pool named 'p'" in m for m in messages)


def test_ruleset_order_fingerprint_and_flags(load_yaml: Callable[..., LoadResult]) -> None:
    text = """\
    - {id: b, priority: 1, when: {status: open}, then: [{note: x}]}
    - {id: a, priority: 1, when: {status: open}, then: [{note: x}]}
    - {id: c, priority: 5, when: {message_text: hi}, then: [{note: x}]}
    - {id: d, enabled: false, when: {contact: {field: name, set: true}}, then: [{note: x}]}
    """
    result = load_yaml(text)
    assert result.ok
    rs = result.ruleset
    assert [r.id for r in rs.rules] == ["c", "a", "b"]
    assert rs.needs_messages and not rs.needs_contact  # d is disabled
    same = load_yaml(text.replace("- {id: b", "# a comment\n    - {id: b")).ruleset
    assert same.fingerprint == rs.fingerprint
    assert load_yaml(text.replace("priority: 5", "priority: 6")).ruleset.fingerprint != rs.fingerprint


def test_folders_are_not_recursive_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("- {id: a, when: {status: open}, then: [{note: x}]}\n")
    (tmp_path / "sub" / "b.yml").write_text("- {id: b, when: {status: open}, then: [{note: x}]}\n")
    (tmp_path / "notes.txt").write_text("not yaml")
    assert [r.id for r in load_rules([tmp_path]).ruleset.rules] == ["a"]
    assert [r.id for r in load_rules([tmp_path], recursive=True).ruleset.rules] == ["a", "b"]
    missing = load_rules([tmp_path / "nope.yaml"])
    assert missing.errors[0].message == "no such file or folder"


def test_mapping_document_with_all_sections(load_yaml: Callable[..., LoadResult]) -> None:
    text = textwrap.dedent("""\
    sla_policies:
      standard: {first_response: 1h, tiers: [{at: 100%, then: [{note: late}]}]}
    rules:
      - id: r
        when: {waiting_for_reply: {longer_than: 1h, business: support}}
        then: [{assign: {pool: front}}]
    """)
    result = load_yaml(text)
    assert result.ok, [e.format() for e in result.errors]
    assert [p.id for p in result.ruleset.sla_policies] == ["standard"]  # compiled: tests/rules/test_sla.py
    assert set(result.ruleset.pools) == {"front"}


@pytest.mark.parametrize(
    "when",
    ["{tags: {none: [vip]}}", "{tags: {any: [vip, gold]}}", "{not: {tags: vip}}", "{status: open}"],
)
def test_a_tag_action_that_makes_its_rule_false_or_is_unrelated_is_no_loop(when: str) -> None:
    text = f"- id: r\n  when: {when}\n  then: [{{tag: vip}}, {{untag: [spam]}}]\n"
    assert load_texts([("f.yaml", text)]).errors == ()


@pytest.mark.parametrize(
    ("attachment", "message"),
    [
        ("files/price-list.pdf", None),
        ("files/missing.pdf", "no such file"),
        ("files/fake.pdf", "the content is not a PDF file"),
        ("files/big.png", "over the 5 MB limit for image files"),
        ("files/tool.exe", "unsupported file type .exe"),
        ("../outside.pdf", "inside the rules folder"),
        ("/etc/passwd", "relative to the rules folder"),
        ("s3://bucket/a.pdf", "relative to the rules folder"),
    ],
)
def test_reply_attachments_are_checked_at_load(tmp_path: Path, attachment: str, message: str | None) -> None:
    files = tmp_path / "files"
    files.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "rules" / "files" / "price-list.pdf", files)
    (files / "fake.pdf").write_text("hello")
    (files / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * (5 * 1024 * 1024))
    (files / "tool.exe").write_bytes(b"MZ")
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        f"- id: r\n  when: {{status: open}}\n  then:\n    - reply: {{text: hi, attachment: '{attachment}'}}\n"
    )
    errors = load_rules([rules]).errors
    if message is None:
        assert errors == ()
        return
    (error,) = errors
    assert (error.line, error.column, error.field) == (4, 37, "then[0].reply.attachment"), error.format()
    assert message in error.message, error.format()


def test_if_unsupported_needs_an_attachment() -> None:
    text = "- id: r\n  when: {status: open}\n  then: [{reply: {text: hi, if_unsupported: skip}}]\n"
    (error,) = load_texts([("f.yaml", text)]).errors
    assert "'if_unsupported' is only used with 'attachment'" in error.message
