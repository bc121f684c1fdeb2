"""Small body and query checks that answer 400/403 with a message naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.simulator.errors import BadRequest, Forbidden
from worker.simulator.store import PIPELINES, Store


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require_int(body: Mapping[str, Any], field: str) -> int:
    value = body.get(field)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"'{field}' is required and must be an integer", errors={field: "integer required"})
    return value


def optional_int(body: Mapping[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is not None and not is_int(value):
        raise BadRequest(f"'{field}' must be an integer or null", errors={field: "integer or null"})
    return value


def require_str(body: Mapping[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"'{field}' is required and must be a non-empty string", errors={field: "string"})
    return value


def require_choice(body: Mapping[str, Any], field: str, choices: tuple[str, ...]) -> str:
    value = body.get(field)
    if value not in choices:
        allowed = ", ".join(choices)
        raise BadRequest(f"'{field}' must be one of {allowed}", errors={field: f"one of {allowed}"})
    return str(value)


def check_organization(store: Store, value: Any) -> None:
    """The token acts for one organization; naming another one is forbidden."""
    if value is None:
        return
    try:
        organization_id = int(value)
    except (TypeError, ValueError):
        raise BadRequest("'organization_id' must be an integer") from None
    if organization_id != store.organization_id:
        raise Forbidden(f"This token cannot act for organization {organization_id}")


def pop_organization(store: Store, query: dict[str, Any]) -> dict[str, Any]:
    """Check and drop a plain `organization_id=` from a query (the whole store is one org)."""
    value = query.get("organization_id")
    if isinstance(value, dict | list):
        return query
    check_organization(store, value)
    return {key: item for key, item in query.items() if key != "organization_id"}


def check_stage(pipeline_id: Any, stage_id: Any) -> None:
    if pipeline_id is None and stage_id is None:
        return
    stages = PIPELINES.get(pipeline_id) if is_int(pipeline_id) else None
    if stages is None:
        raise BadRequest(f"Unknown pipeline_id {pipeline_id!r}", errors={"pipeline_id": "unknown"})
    if stage_id not in stages:
        raise BadRequest(
            f"pipeline_stage_id {stage_id!r} is not a stage of pipeline {pipeline_id}",
            errors={"pipeline_stage_id": f"one of {list(stages)}"},
        )
