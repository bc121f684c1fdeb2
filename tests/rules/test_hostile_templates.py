"""Templates cannot do unbounded work (issue 13, finding 2).

Reply and note texts (and predefined messages, which only arrive at run time)
render in a sandbox that refuses huge arithmetic, big ranges, runaway loops and
recursion, output beyond the message cap, and renders past a time budget; it
never folds constants while compiling, so `validate` cannot freeze either.
Every refusal is a `TemplateRenderError` (the firing fails at once, not retried).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

import pytest

from worker.api.models import Contact, Conversation
from worker.rules import load_texts
from worker.rules.templates import (
    MAX_RANGE,
    MAX_TEMPLATE_CHARS,
    MAX_TEXT_CHARS,
    RENDER_BUDGET_S,
    Budget,
    TemplateRenderError,
    render,
)

CONV = Conversation(id=7, channel="webchat", tags=["vip", "billing"])
CONTACT = Contact(id=2, name="Ann Lee")
# A guard, not a timing assertion: without the sandbox's limits these never end.
ENDS = pytest.mark.timeout(30)

BOMB = "{{ 9**(9**9) }}"
HOSTILE = {
    "power": BOMB,
    "power of a name": "{{ conversation.id ** (9**9) }}",
    "string times a huge number": "{{ 'ab' * 10**8 }}",
    "list times a huge number": "{{ [1] * 10**8 }}",
    "integers past the size cap": "{{ (9**99) * (9**99) * (9**99) * (9**99) }}",
    "huge range": "{{ range(10**9)|list|length }}",
    "range past the cap": "{% for i in range(" + str(MAX_RANGE + 1) + ") %}{% endfor %}",
    "nested loops": "{% for i in range(999) %}{% for j in range(999) %}{% for k in range(999) %}"
    "{% endfor %}{% endfor %}{% endfor %}",
    "concat doubling": "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "plus doubling": "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "block doubling": "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
    "{% set b %}{{ ns.s }}{{ ns.s }}{% endset %}{% set ns.s = b %}{% endfor %}{{ ns.s|length }}",
    "exponential macro": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
    "{{ f(60) }}",
    "endless recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "wide str.format": "{{ '{:999999999}'.format(1) }}",
    "wide percent": "{{ '%999999999s' % 1 }}",
    "star width": "{{ '%*d' % (999999999, 1) }}",
    "wide format filter": "{{ '%999999999s'|format(1) }}",
    "wide center filter": "{{ 'a'|center(999999999) }}",
    "wide str method": "{{ 'a'.ljust(999999999) }}",
    "output past the cap": "{% for i in range(900) %}hello {% endfor %}",
    "lipsum": "{{ lipsum(10**6) }}",
    "division by zero": "{{ 1 / 0 }}",
    "type error": "{{ 1 + 'a' }}",
}


@ENDS
@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_templates_fail_with_a_reason(text: str) -> None:
    with pytest.raises(TemplateRenderError, match="cannot render template"):
        render(text, CONV, CONTACT)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hi {{ contact.first_name }}, about #{{ conversation.id }}.", "Hi Ann, about #7."),
        ("{% for t in conversation.tags %}{{ t }}{% if not loop.last %}, {% endif %}{% endfor %}",
         "vip, billing"),
        ("{{ '%.1f'|format(2.5) }} {{ '{} {}'.format('a', 'b') }} {{ 2**10 }} {{ 'ab' * 3 }}",
         "2.5 a b 1024 ababab"),
        ("{{ 'x' * " + str(MAX_TEXT_CHARS) + " }}", "x" * MAX_TEXT_CHARS),
        ("{% for i in range(3) %}{{ i }}{% endfor %}", "012"),
    ],
)  # fmt: skip
def test_ordinary_templates_still_render(text: str, expected: str) -> None:
    assert render(text, CONV, CONTACT) == expected


def test_a_template_source_over_the_cap_is_not_compiled() -> None:
    """A predefined message of megabytes would cost its compile before any output cap."""
    text = "{% if false %}" + "x" * MAX_TEMPLATE_CHARS + "{% endif %}ok"
    with pytest.raises(TemplateRenderError, match=f"longer than {MAX_TEMPLATE_CHARS}"):
        render(text, CONV, CONTACT)
    result = load_texts([("rules.yaml", _rule_with(text))])
    assert f"longer than {MAX_TEMPLATE_CHARS}" in result.errors[0].message


def test_the_rendered_size_is_capped_and_the_reason_names_the_cap() -> None:
    with pytest.raises(TemplateRenderError, match=str(MAX_TEXT_CHARS)):
        render("{{ contact.name }}" + "x" * MAX_TEXT_CHARS, CONV, CONTACT)


class SteppingClock:
    """A clock that moves a fixed step every time it is read: no sleeping."""

    def __init__(self, step_s: float) -> None:
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def test_a_render_past_its_time_budget_stops() -> None:
    clock = SteppingClock(RENDER_BUDGET_S / 4)
    text = "{% for i in range(10) %}{{ i }}{% endfor %}"
    with pytest.raises(TemplateRenderError, match="time budget"):
        render(text, CONV, CONTACT, budget=Budget(clock=clock))
    assert render(text, CONV, CONTACT, budget=Budget(clock=SteppingClock(0.0))) == "0123456789"


def _rule_with(text: str) -> str:
    return textwrap.dedent(
        f"""\
        rules:
          - id: t
            when: {{status: open}}
            then:
              - note: "{text}"
        """
    )


@ENDS
@pytest.mark.parametrize("text", [BOMB, "{{ 'x' * 10**9 }}", "{{ (2**64) ** 99 }}"])
def test_validate_reports_constant_arithmetic_too_large_without_computing_it(text: str) -> None:
    result = load_texts([("rules.yaml", _rule_with(text))])
    assert result.ruleset.rules == ()
    (error,) = result.errors
    assert (error.line, error.column) == (5, 15), error.format()
    assert "too large" in error.message, error.format()


@ENDS
def test_validate_does_not_run_templates() -> None:
    """Loops and calls cannot be judged at load: they load and fail (at once) when rendered."""
    nested = HOSTILE["nested loops"]
    result = load_texts([("rules.yaml", _rule_with(nested))])
    assert result.ok, [e.format() for e in result.errors]


@pytest.fixture(autouse=True)
def _no_leftover_budget() -> Iterator[None]:
    yield
    from worker.rules import templates

    assert templates.current_budget() is None  # a render never leaves its budget behind
