"""The OpenAPI description of the listing routes (``inspect_routes.py``), merged into the
document of ``openapi.py``."""

from __future__ import annotations

from typing import Any

__all__ = ["inspect_paths", "inspect_schemas"]

_STATUSES = ["pending", "running", "completed", "failed", "cancelled"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _page(item: str) -> dict[str, Any]:
    return {
        "description": "one page, newest first; next_cursor is null on the last page",
        "content": {"application/json": {"schema": _ref(f"{item}Page")}},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "default 50")
_CURSOR = _query("cursor", {"type": "string"}, "a page's next_cursor, unchanged")
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}


def inspect_paths(prefix: str, bearer: list[dict[str, list[str]]]) -> dict[str, Any]:
    """The listing routes' path items."""
    common = {"401": _error("missing or wrong bearer token")}
    bad = _error("a bad filter, limit or cursor, or an unknown query parameter")
    return {
        f"{prefix}/runs": {
            "get": {
                "operationId": "list_runs",
                "security": bearer,
                "parameters": [
                    _query("status", {"type": "string", "enum": _STATUSES}, "only this status"),
                    _query("workflow", {"type": "string"}, "only this workflow"),
                    _query("version", {"type": "string"}, "only runs started under it"),
                    _query("created_after", _TIME, "exclusive"),
                    _query("created_before", _TIME, "exclusive"),
                    _LIMIT,
                    _CURSOR,
                ],
                "responses": {"200": _page("RunSummary"), "400": bad, **common},
            }
        },
        f"{prefix}/hooks": {
            "get": {
                "operationId": "list_hooks",
                "security": bearer,
                "parameters": [
                    _query("run_id", {"type": "string"}, "only this run's hooks"),
                    _LIMIT,
                    _CURSOR,
                ],
                "responses": {
                    "200": _page("HookSummary"),
                    "400": bad,
                    "404": _error("no run has this id"),
                    **common,
                },
            }
        },
        f"{prefix}/runs/{{run_id}}/events": {
            "get": {
                "operationId": "list_events",
                "security": bearer,
                "parameters": [
                    {
                        "name": "run_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    _query("after", {"type": "integer", "minimum": 0}, "the last seq seen"),
                    _LIMIT,
                ],
                "responses": {
                    "200": _page("EventRecord"),
                    "400": bad,
                    "404": _error("no run has this id"),
                    **common,
                },
            }
        },
    }


_SUMMARY_PROPERTIES: dict[str, Any] = {
    "run_id": {"type": "string"},
    "workflow_name": {"type": "string"},
    "status": {"type": "string", "enum": _STATUSES},
    "created_at": _TIME,
    "started_at": _NULLABLE_TIME,
    "completed_at": _NULLABLE_TIME,
    "version": {"type": "string", "nullable": True},
}

_WAITING_ON = {
    "type": "object",
    "properties": {
        "hooks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "token": {"type": "string"},
                    "hook_id": {"type": "string"},
                    "is_webhook": {"type": "boolean"},
                    "since": _TIME,
                },
            },
        },
        "sleeps": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"wait_id": {"type": "string"}, "until": _TIME},
            },
        },
        "steps": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "step_id": {"type": "string"},
                    "name": {"type": "string"},
                    "attempt": {"type": "integer"},
                    "started_at": _TIME,
                    "next_retry_at": _NULLABLE_TIME,
                },
            },
        },
    },
}


def _page_schema(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref(item)},
            "next_cursor": {"type": "string", "nullable": True},
        },
    }


def inspect_schemas() -> dict[str, Any]:
    """The listing routes' schemas, and the fields ``GET .../runs/<id>`` gains."""
    return {
        "RunSummary": {
            "type": "object",
            "required": list(_SUMMARY_PROPERTIES),
            "properties": _SUMMARY_PROPERTIES,
        },
        "HookSummary": {
            "type": "object",
            "required": ["token", "hook_id", "run_id", "kind", "created_at", "received"],
            "properties": {
                "token": {"type": "string"},
                "hook_id": {"type": "string"},
                "run_id": {"type": "string"},
                "kind": {"type": "string", "enum": ["hook", "webhook"]},
                "created_at": _TIME,
                "received": {"type": "integer"},
                "buffered": {"type": "integer", "nullable": True},
            },
        },
        "EventRecord": {
            "type": "object",
            "required": ["seq", "event_id", "run_id", "type", "created_at", "data"],
            "properties": {
                "seq": {"type": "integer"},
                "event_id": {"type": "string"},
                "run_id": {"type": "string"},
                "type": {"type": "string"},
                "correlation_id": {"type": "string", "nullable": True},
                "created_at": _TIME,
                "data": {"type": "object"},
            },
        },
        "RunSummaryPage": _page_schema("RunSummary"),
        "HookSummaryPage": _page_schema("HookSummary"),
        "EventRecordPage": _page_schema("EventRecord"),
        "WaitingOn": _WAITING_ON,
    }


def run_fields() -> dict[str, Any]:
    """The properties ``GET .../runs/<id>`` gains (``Run.info``)."""
    return {**_SUMMARY_PROPERTIES, "waiting_on": _ref("WaitingOn")}
