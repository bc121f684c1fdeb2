"""The JSON Schema of rule files, built from the same models and registries the loader uses."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from worker.rules.actions import ACTIONS, Action
from worker.rules.calendars import CalendarConfig
from worker.rules.conditions import CONDITIONS, Condition
from worker.rules.model import RuleHeader
from worker.rules.routing import AgentConfig, PoolConfig
from worker.rules.sla import PolicyConfig, TierConfig

SCHEMA_ID = "https://inboxpilot.dev/schema/rules.json"
Json = dict[str, Any]


class _Defs:
    def __init__(self) -> None:
        self.defs: Json = {}

    def ref(self, model: type[BaseModel], name: str | None = None) -> Json:
        name = name or model.__name__
        if name not in self.defs:
            schema = model.model_json_schema(ref_template="#/$defs/{model}")
            self.defs.update(schema.pop("$defs", {}))
            self.defs[name] = schema
        return {"$ref": f"#/$defs/{name}"}


def _without_null(schema: Json) -> Json:
    options = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    return options[0] if len(options) == 1 else schema


def _shorthand(cls: type[Condition] | type[Action]) -> list[Json]:
    if cls.key in ("owner", "ai_assistant", "pipeline", "stage"):
        return [
            {"enum": ["set", "unset"]},
            {"type": "integer"},
            {"type": "array", "items": {"type": "integer"}},
        ]
    if cls.key == "assign":
        return [{"type": "integer", "description": "user id"}]
    if cls.shorthand is None:
        return []
    fields = cls.model_json_schema()["properties"]
    field = _without_null(fields[cls.shorthand])
    if field.get("type") == "array":
        return [field["items"], field]
    return [field]


def _value_schema(defs: _Defs, cls: type[Condition] | type[Action]) -> Json:
    options = [defs.ref(cls, f"{cls.key}_config"), *_shorthand(cls)]
    if issubclass(cls, Action) and not cls.model_json_schema().get("required"):
        options.append({"type": "null"})
    schema: Json = {"anyOf": options} if len(options) > 1 else options[0]
    return {**schema, "description": (cls.__doc__ or cls.key).strip().splitlines()[0]}


def _condition(defs: _Defs) -> Json:
    props: Json = {key: _value_schema(defs, cls) for key, cls in CONDITIONS.items()}
    props["all"] = {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/condition"}}
    props["any"] = {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/condition"}}
    props["not"] = {"$ref": "#/$defs/when"}
    return {"type": "object", "properties": props, "additionalProperties": False, "minProperties": 1}


def _action(defs: _Defs) -> Json:
    bare = [key for key, cls in ACTIONS.items() if not cls.model_json_schema().get("required")]
    props = {key: _value_schema(defs, cls) for key, cls in ACTIONS.items()}
    one = {
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
    }
    return {"anyOf": [{"enum": bare}, one]}


def _sla_policy(defs: _Defs) -> Json:
    """A policy: `applies_to` is a `when`, a tier's `then` is a rule's `then` (worker/rules/sla.py)."""
    ref = defs.ref(PolicyConfig)
    defs.ref(TierConfig)
    defs.defs["PolicyConfig"]["properties"]["applies_to"] = {"$ref": "#/$defs/when"}
    tier = defs.defs["TierConfig"]["properties"]
    tier["then"] = {"anyOf": [{"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/action"}}]}
    tier["at"] = {"anyOf": [tier["at"], {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%\s*$"}]}
    return ref


def rules_json_schema() -> Json:
    """The schema `inboxpilot schema` prints and rules/schema.json holds."""
    defs = _Defs()
    defs.defs["condition"] = _condition(defs)
    defs.defs["when"] = {
        "anyOf": [{"$ref": "#/$defs/condition"}, {"type": "array", "items": {"$ref": "#/$defs/condition"}}]
    }
    defs.defs["action"] = _action(defs)
    header = RuleHeader.model_json_schema()
    rule = {
        "type": "object",
        "properties": {
            **header["properties"],
            "when": {"$ref": "#/$defs/when"},
            "then": {
                "anyOf": [
                    {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/action"}},
                    {"$ref": "#/$defs/action"},
                ]
            },
        },
        "required": ["id", "when", "then"],
        "additionalProperties": False,
    }
    defs.defs["rule"] = rule
    rules = {"type": "array", "items": {"$ref": "#/$defs/rule"}}
    document = {
        "type": "object",
        "properties": {
            "rules": rules,
            "calendars": {"type": "object", "additionalProperties": defs.ref(CalendarConfig)},
            "agents": {"type": "array", "items": defs.ref(AgentConfig)},
            "pools": {"type": "object", "additionalProperties": defs.ref(PoolConfig)},
            "sla_policies": {"type": "object", "additionalProperties": _sla_policy(defs)},
        },
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "inboxpilot rule file",
        "anyOf": [rules, document],
        "$defs": dict(sorted(defs.defs.items())),
    }
