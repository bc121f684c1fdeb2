"""The firing notions have one home: rules/firing.py builds and parses every key."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import pytest

from worker.api.models import Conversation
from worker.rules.firing import (
    SITUATIONS,
    Situation,
    action_index,
    check_situations,
    firing_key,
    firing_of,
    item_key,
    sibling_keys,
    situation_of,
    situation_start,
    split_firing_key,
)
from worker.rules.model import Once

WORKER = Path(__file__).resolve().parents[2] / "worker"
# Ways a key could be built or parsed by hand: an item suffix, a split of the key's parts.
KEY_HANDLING = re.compile(r'r?split\("#"|r?partition\("#"\)|split\(":", 2\)|\}#\{|f"\{rule_id\}:\{')


def test_every_once_value_has_a_situation_with_a_start() -> None:
    assert set(SITUATIONS) == set(get_args(Once))
    check_situations(SITUATIONS)


def test_a_once_value_without_its_situation_fails_the_check() -> None:
    partial = {k: v for k, v in SITUATIONS.items() if k != "per_assignment"}
    with pytest.raises(RuntimeError, match="per_assignment"):
        check_situations(partial)
    broken = {**SITUATIONS, "per_assignment": Situation(SITUATIONS["per_assignment"].key, None)}  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="start"):
        check_situations(broken)


def test_keys_round_trip() -> None:
    key = firing_key("sla", 42, "in:2026-01-01T00:00:00+00:00")
    assert split_firing_key(key) == ("sla", "42")
    item = item_key(key, 1)
    assert firing_of(item) == key
    assert split_firing_key(item) == ("sla", "42")
    assert sibling_keys(item, 3) == [item_key(key, 0), item_key(key, 2)]
    assert (action_index(item), action_index(key)) == (1, 0)
    assert situation_of(item) == situation_of(key) == "in:2026-01-01T00:00:00+00:00"


def test_situation_start_reads_the_record() -> None:
    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    conv = Conversation.model_validate({"id": 7, "channel": "webchat", "last_inbound_at": at.isoformat()})
    assert situation_start("per_inbound_message", conv) == at
    assert situation_start("per_conversation", conv) is None


def test_no_other_module_builds_or_parses_firing_keys() -> None:
    offenders = [
        str(path.relative_to(WORKER))
        for path in WORKER.rglob("*.py")
        if path.name != "firing.py" and KEY_HANDLING.search(path.read_text())
    ]
    assert offenders == []
