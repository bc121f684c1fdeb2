"""Each action type: parses from YAML (long and short forms), labels, conflict slots, errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from worker.api.models import Contact, Conversation
from worker.rules import ACTIONS, LoadResult, RuleSet, render
from worker.rules.actions import (
    AssignAction,
    AssignAiAssistantAction,
    MoveAction,
    NoteAction,
    ReplyAction,
    RunAutomationAction,
    SetStatusAction,
    TagAction,
    UnassignAction,
    UnassignAiAssistantAction,
    UntagAction,
)

CASES = [
    ("assign: 5", AssignAction(user=5)),
    ("assign: {pool: front}", AssignAction(pool="front")),
    ("unassign", UnassignAction()),
    ("unassign:", UnassignAction()),
    ("assign_ai_assistant: 9", AssignAiAssistantAction(id=9)),
    ("unassign_ai_assistant", UnassignAiAssistantAction()),
    ("move: {pipeline: 1, stage: 2}", MoveAction(pipeline=1, stage=2)),
    ("set_status: closed", SetStatusAction(status="closed")),
    ("reply: Hello {{ contact.name }}", ReplyAction(text="Hello {{ contact.name }}")),
    ("reply: {predefined: 12, outside_window: note}", ReplyAction(predefined=12, outside_window="note")),
    (
        "reply: {predefined: Welcome, outside_window: template, template: hello_v1}",
        ReplyAction(predefined="Welcome", outside_window="template", template="hello_v1"),
    ),
    ("note: internal", NoteAction(text="internal")),
    ("run_automation: 44", RunAutomationAction(automation_id=44)),
    ("tag: vip", TagAction(tags=["vip"])),
    ("tag: [vip, vip, escalated]", TagAction(tags=["vip", "escalated"])),
    ("untag: {tags: [awaiting-customer]}", UntagAction(tags=["awaiting-customer"])),
]


@pytest.mark.parametrize(("yaml_action", "expected"), CASES)
def test_action_parses(make_ruleset: Callable[[str], RuleSet], yaml_action: str, expected: object) -> None:
    rs = make_ruleset(f"- id: r\n  when: {{channel: sms}}\n  then:\n    - {yaml_action}\n")
    (action,) = rs.rules[0].then
    assert action == expected
    assert action.label()


def test_every_action_has_a_case() -> None:
    assert set(ACTIONS) == {type(c[1]).key for c in CASES}


@pytest.mark.parametrize(
    ("yaml_action", "message"),
    [
        ("assign: {user: 1, pool: front}", "exactly one of 'user'"),
        ("assign: {pool: nowhere}", "no pool named 'nowhere'"),
        ("move: {stage: 2}", "missing required key 'pipeline'"),
        ("set_status: pending", "'open' or 'closed'"),
        ("reply: {text: hi, outside_window: template}", "needs 'template'"),
        ("reply: {text: '{{ contact.nickname }}'}", "unknown placeholder 'contact.nickname'"),
        ("reply: {text: '{{ secret }}'}", "unknown placeholder 'secret'"),
        ("reply: {text: '{{ contact.name '}", "does not parse"),
        ("reply: {text: hi, predefined: 3}", "exactly one of 'predefined'"),
        ("note: {txt: x}", "unknown key 'txt'"),
        ("run_automation: '44'", "valid integer"),
        ("tags: vip", "unknown action 'tags' (did you mean 'tag'?"),
        ("{note: a, unassign: null}", "one-key mapping"),
    ],
)
def test_action_errors(load_yaml: Callable[..., LoadResult], yaml_action: str, message: str) -> None:
    result = load_yaml(f"- id: r\n  when: {{channel: sms}}\n  then:\n    - {yaml_action}\n")
    assert not result.ruleset.rules
    assert any(message in e.message for e in result.errors), [e.format() for e in result.errors]
    assert all(e.line >= 4 for e in result.errors), [e.format() for e in result.errors]


def test_conflict_slots() -> None:
    assert AssignAction(user=1).conflict_slot == UnassignAction().conflict_slot == "owner"
    assert AssignAction(user=1).conflict_value() != AssignAction(pool="p").conflict_value()
    assert MoveAction(pipeline=1, stage=2).conflict_slot == "stage"
    assert SetStatusAction(status="open").conflict_slot == "status"
    assert NoteAction(text="x").conflict_slot is None


def test_render_placeholders() -> None:
    conv = Conversation(id=7, channel="whatsapp")
    text = "Hi {{ contact.first_name }} ({{ contact.email }}), re #{{ conversation.id }} - {{ agent.name }}"
    assert render(text, conv, Contact(id=1, name="Ann Lee"), {"name": "Bo"}) == "Hi Ann (), re #7 - Bo"
    assert render(text, conv) == "Hi  (), re #7 - "


def test_render_is_sandboxed() -> None:
    from worker.rules.templates import TemplateRenderError

    conv = Conversation(id=7, channel="whatsapp")
    with pytest.raises(TemplateRenderError):
        render("{{ conversation.__class__.__mro__ }}", conv)


def test_tag_changes_apply_with_set_semantics() -> None:
    from worker.execution.tags import applied, apply_delta, combined

    assert apply_delta(["a", "b"], {"add": ["b", "c"]}) == ["a", "b", "c"]
    assert apply_delta(["a", "b"], {"remove": ["a", "z"]}) == ["b"]
    assert combined(["x"], [{"add": ["y"]}, {"remove": ["x"]}, {"add": ["y"]}]) == ["y"]
    assert applied(["a", "b"], {"add": ["a"], "remove": ["c"]})
    assert not applied(["a"], {"remove": ["a"]})
