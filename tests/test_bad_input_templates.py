"""Templates: a placeholder that does not exist is a load error where it can be known, else
the reply is not sent and its firing ends with a reason -- never a literal `{{ }}` to a customer.

End to end: the loader, then the execution layer against the simulator (what the
API received is read from its audit log).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.e2e._exec_helpers import flush_redis, plan_and_claim, posts, runtime_on
from worker.api.services import SEND_PATHS
from worker.execution.execute import execute
from worker.rules import load_texts
from worker.runtime import Runtime
from worker.simulator.testing import SimulatorHandle

SEND = SEND_PATHS["webchat"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Hi {{ contact.nmae }}", "unknown placeholder 'contact.nmae'"),
        ("Hi {{ customer.name }}", "unknown placeholder 'customer'"),
        ("Hi {{ contact.name ", "does not parse"),
    ],
)
def test_unknown_placeholders_are_load_errors(text: str, message: str) -> None:
    rules = f'rules:\n  - id: r\n    when: {{status: open}}\n    then:\n      - reply: "{text}"\n'
    result = load_texts([("r.yaml", rules)])
    assert result.ruleset.rules == ()
    (error,) = result.errors
    assert message in error.message and error.line == 5, error.format()


PREDEFINED = """
rules:
  - id: canned
    when: {status: open}
    then:
      - reply: {predefined: "Welcome"}
"""
BY_NAME = """
rules:
  - id: greet
    when: {status: open}
    then:
      - reply: "Hi {{ contact.name }}, thanks for writing."
"""


@pytest.fixture
def make(simulator: SimulatorHandle, redis_url: str) -> Iterator[ExitStack]:
    flush_redis(redis_url)
    with ExitStack() as stack:
        yield stack


def run(runtime: Runtime, conversation_id: int) -> tuple[str, str]:
    (step,) = plan_and_claim(runtime, [conversation_id])
    execute(runtime, step)
    entry = runtime.ledger.get(step.items[0].key)
    assert entry is not None
    return entry.state, entry.reason or str(entry.outcome.get("reason", ""))


def test_a_predefined_text_with_an_unknown_placeholder_is_not_sent(
    simulator: SimulatorHandle, redis_url: str, make: ExitStack
) -> None:
    """Predefined texts come from the API at run time: the loader cannot check them."""
    runtime = make.enter_context(runtime_on(simulator, redis_url, PREDEFINED))
    runtime.api.predefined.create("Welcome", "Hello {{ customer.first_name }}, welcome!")
    conv = int(simulator.sim.new_conversation(channel="webchat")["id"])

    state, reason = run(runtime, conv)

    assert state in ("failed", "skipped") and "template" in reason, (state, reason)
    assert posts(simulator, SEND) == []


@pytest.mark.parametrize("name", ["{{ contact.name }}", "Eve {% if 1 %}x{% endif %}", "{{7*7}}"])
def test_a_value_that_looks_like_a_template_is_never_sent(
    name: str, simulator: SimulatorHandle, redis_url: str, make: ExitStack
) -> None:
    """Values are inserted, never rendered again; one holding braces stops the send."""
    runtime = make.enter_context(runtime_on(simulator, redis_url, BY_NAME))
    conv = int(simulator.sim.new_conversation(channel="webchat", contact={"name": name})["id"])

    state, reason = run(runtime, conv)

    sent = [e.body["message_text"] for e in posts(simulator, SEND)]
    assert all("{{" not in text and "49" not in text for text in sent)
    if "{{" in name:
        assert sent == [] and state in ("failed", "skipped") and "template" in reason
    else:  # inserted as written, not evaluated
        assert sent == [f"Hi {name}, thanks for writing."]


def test_a_missing_value_renders_empty_not_as_braces(
    simulator: SimulatorHandle, redis_url: str, make: ExitStack
) -> None:
    runtime = make.enter_context(runtime_on(simulator, redis_url, BY_NAME))
    conv = int(simulator.sim.new_conversation(channel="webchat", contact={"name": None})["id"])

    state, _ = run(runtime, conv)

    assert state == "done"
    (entry,) = posts(simulator, SEND)
    assert entry.body["message_text"] == "Hi , thanks for writing."


HOSTILE_PREDEFINED = {
    "power": "Hi {{ 9**(9**9) }}",
    "huge range": "{{ range(10**9)|list }}",
    "nested loops": "{% for i in range(999) %}{% for j in range(999) %}.{% endfor %}{% endfor %}",
    "huge output": "{{ 'ab' * 4000 }}",
    "division by zero": "{{ 1 / 0 }}",
}


@pytest.mark.timeout(60)  # a guard: without the sandbox's limits the power never ends
@pytest.mark.parametrize("text", HOSTILE_PREDEFINED.values(), ids=HOSTILE_PREDEFINED.keys())
def test_a_hostile_predefined_message_fails_its_firing_at_once(
    text: str, simulator: SimulatorHandle, redis_url: str, make: ExitStack
) -> None:
    """Predefined texts skip `validate`: the sandbox bounds their work, and whatever goes
    wrong fails the firing with a reason instead of raising (which dramatiq would retry)."""
    runtime = make.enter_context(runtime_on(simulator, redis_url, PREDEFINED))
    runtime.api.predefined.create("Welcome", text)
    conv = int(simulator.sim.new_conversation(channel="webchat")["id"])

    state, reason = run(runtime, conv)  # execute() returns: nothing for dramatiq to retry

    assert state == "failed" and reason.startswith("template: cannot render template"), (state, reason)
    assert posts(simulator, SEND) == []
