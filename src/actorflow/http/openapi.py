"""The OpenAPI 3.0 description of the routes ``create_app`` serves (for clients and fuzzers)."""

from __future__ import annotations

from typing import Any

from .deploy_routes import deploy_paths, deploy_schemas
from .openapi_inspect import inspect_paths, inspect_schemas, run_fields

__all__ = ["openapi_document"]

_PREFIX = "/.well-known/workflow/v1"


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, ref: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _body(ref: str, *, required: bool = True) -> dict[str, Any]:
    return {
        "required": required,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


_COMMON = {
    "400": _error("malformed JSON or a field of the wrong type"),
    "401": _error("missing or wrong bearer token"),
    "413": _error("the body is over the size limit"),
    "415": _error("the body is not application/json"),
    "503": _error("overloaded (see Retry-After) or the event log stopped accepting writes"),
}

_WEBHOOK_RESPONSES: dict[str, Any] = {
    "default": {"description": "the webhook's static or manual response"},
    "202": {"description": "accepted: the request is durably delivered to the workflow"},
    "401": _error("the request failed the webhook's signature check; nothing was committed"),
    "404": _error("unknown or disposed webhook, ended run, or not a webhook's token"),
    "413": _error("the body is over the size limit"),
    "503": _error("overloaded (see Retry-After) or the event log stopped accepting writes"),
    "504": _error("a manual webhook's workflow did not respond in time"),
}

_TOKEN = {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
_RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}

_SCHEMAS: dict[str, Any] = {
    "WakeUp": {
        "type": "object",
        "properties": {"correlation_ids": {"type": "array", "items": {"type": "string"}}},
    },
    "WokenUp": {
        "type": "object",
        "required": ["run_id", "woken"],
        "properties": {
            "run_id": {"type": "string"},
            "woken": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "problems": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}, "log_backlog": {"type": "integer"}},
    },
    "Hook": {
        "type": "object",
        "required": [
            "run_id",
            "hook_id",
            "token",
            "owner_id",
            "project_id",
            "environment",
            "created_at",
            "metadata",
            "spec_version",
            "is_webhook",
        ],  # fmt: skip
        "properties": {
            "run_id": {"type": "string"},
            "hook_id": {"type": "string"},
            "token": {"type": "string"},
            "owner_id": {"type": "string"},
            "project_id": {"type": "string"},
            "environment": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "metadata": {"nullable": True},
            "spec_version": {"type": "integer"},
            "is_webhook": {"type": "boolean"},
        },
    },
    "ResumeHook": {
        "type": "object",
        "required": ["token", "payload"],
        "properties": {
            "token": {"type": "string", "minLength": 1},
            "payload": {"nullable": True},
            "idempotency_key": {"type": "string", "minLength": 1},
        },
    },
    "StartRun": {
        "type": "object",
        "required": ["workflow"],
        "properties": {
            "workflow": {"type": "string", "minLength": 1},
            "args": {"type": "array", "items": {}},
            "kwargs": {"type": "object"},
        },
    },
    "Started": {
        "type": "object",
        "required": ["run_id"],
        "properties": {"run_id": {"type": "string"}},
    },
    "CancelRun": {"type": "object", "properties": {"reason": {"type": "string"}}},
    "Run": {
        "type": "object",
        "required": ["run_id", "workflow", "status", "hooks"],
        "properties": {
            "run_id": {"type": "string"},
            "workflow": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["pending", "running", "completed", "failed", "cancelled"],
            },
            "result": {"nullable": True},
            "error": {
                "type": "object",
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            },
            "hooks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["hook_id", "token", "is_webhook"],
                    "properties": {
                        "hook_id": {"type": "string"},
                        "token": {"type": "string"},
                        "is_webhook": {"type": "boolean"},
                        "url": {"type": "string"},
                    },
                },
            },
        },
    },
}


def _schemas() -> dict[str, Any]:
    schemas = {**_SCHEMAS, **inspect_schemas()}
    run = dict(schemas["Run"])
    run["properties"] = {**run["properties"], **run_fields()}
    schemas["Run"] = run
    return schemas


def openapi_document(*, resume_routes: bool) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document; the bearer routes appear only when ``resume_routes``."""
    webhook_operation = {
        "summary": "Deliver an HTTP request to the webhook that owns the token",
        "parameters": [_TOKEN],
        "requestBody": {"required": False, "content": {"*/*": {"schema": {}}}},
        "responses": _WEBHOOK_RESPONSES,
    }
    paths: dict[str, Any] = {
        f"{_PREFIX}/webhook/{{token}}": {
            method: dict(webhook_operation, operationId=f"webhook_{method}")
            for method in ("get", "post", "put", "patch", "delete", "options", "head", "trace")
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness and the event log's health",
                "responses": {
                    "200": _json("serving, and the log accepts writes", "Health"),
                    "503": _error("the runtime is not started, or the log failed"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text format; open, like /healthz)",
                "responses": {
                    "200": {
                        "description": "counters, gauges and histograms of this runtime",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    if resume_routes:
        bearer: list[dict[str, list[str]]] = [{"bearer": []}]
        paths[f"{_PREFIX}/hooks/resume"] = {
            "post": {
                "operationId": "resume_hook",
                "security": bearer,
                "requestBody": _body("ResumeHook"),
                "responses": {
                    "200": _json("durably delivered", "Hook"),
                    "404": _error("no live hook owns the token"),
                    "409": _error("the idempotency key was used with another payload"),
                    "422": _error("a typed hook rejected the payload"),
                    **_COMMON,
                },
            }
        }
        paths[f"{_PREFIX}/hooks/{{token}}"] = {
            "get": {
                "operationId": "get_hook_by_token",
                "security": bearer,
                "parameters": [_TOKEN],
                "responses": {
                    "200": _json("the live hook", "Hook"),
                    "401": _COMMON["401"],
                    "404": _error("no live hook owns the token"),
                },
            }
        }
        paths[f"{_PREFIX}/runs"] = {
            "post": {
                "operationId": "start_run",
                "security": bearer,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "a retry with the same key returns the first run",
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": _body("StartRun"),
                "responses": {
                    "201": _json("the run is durably created (or was, for this key)", "Started"),
                    "400": _error(
                        "bad JSON, no workflow has this name, or the arguments do not fit it"
                    ),
                    **{k: v for k, v in _COMMON.items() if k != "400"},
                },
            }
        }
        paths[f"{_PREFIX}/runs/{{run_id}}"] = {
            "get": {
                "operationId": "get_run",
                "security": bearer,
                "parameters": [_RUN_ID],
                "responses": {
                    "200": _json("the run", "Run"),
                    "401": _COMMON["401"],
                    "404": _error("no run has this id"),
                },
            }
        }
        paths[f"{_PREFIX}/runs/{{run_id}}/cancel"] = {
            "post": {
                "operationId": "cancel_run",
                "security": bearer,
                "parameters": [_RUN_ID],
                "requestBody": _body("CancelRun", required=False),
                "responses": {
                    "200": _json("the run after the cancel (a no-op once ended)", "Run"),
                    "404": _error("no run has this id"),
                    **_COMMON,
                },
            }
        }
        paths.update(inspect_paths(_PREFIX, bearer))
        paths.update(deploy_paths(_PREFIX, bearer))
        paths.update(_stream_paths(bearer))
    return {
        "openapi": "3.0.3",
        "info": {"title": "actorflow", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {**_schemas(), **deploy_schemas()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _stream_paths(bearer: Any) -> dict[str, Any]:
    """A run's stream (Server-Sent Events, framing in ``run_streams.py``) and its wake-up."""
    namespace = {
        "name": "namespace",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._~:-]{1,200}$"},
    }
    start = {
        "name": "start",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
        "description": "the index of the first chunk to send (default: Last-Event-ID + 1, or 0)",
    }
    return {
        f"{_PREFIX}/runs/{{run_id}}/streams/{{namespace}}": {
            "get": {
                "operationId": "read_stream",
                "security": bearer,
                "parameters": [_RUN_ID, namespace, start],
                "responses": {
                    "200": {
                        "description": "the chunks from `start` as Server-Sent Events (`id` is "
                        "the chunk's index, `data` its JSON), then an `end` event once the "
                        "stream is closed or the run has ended",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "400": _error("an invalid namespace or start index"),
                    "401": _error("missing or wrong bearer token"),
                    "404": _error("no run has this id"),
                },
            }
        },
        f"{_PREFIX}/runs/{{run_id}}/wake-up": {
            "post": {
                "operationId": "wake_up",
                "security": bearer,
                "parameters": [_RUN_ID],
                "requestBody": _body("WakeUp", required=False),
                "responses": {
                    "200": _json("the sleeps fired now (their wait ids)", "WokenUp"),
                    "404": _error("no run has this id"),
                    **_COMMON,
                },
            }
        },
    }
