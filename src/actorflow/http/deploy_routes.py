"""The route of issue 17: retry a server's parked runs with the code it runs now.

::

    POST  PREFIX/runs/retry-parked   bearer: {"resumed": [run ids], "parked": [run ids]}

A run is parked when the code no longer fits its history (see ``actorflow.runtime.parking``);
the route replays every parked run this server holds and answers which go on again and which
are still parked. ``actorflow runs retry --url URL`` calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Blueprint
from quart import Response as QuartResponse

from ..runtime.runtime import Runtime
from .responses import error_response, json_response

__all__ = ["RETRY_PATH", "add_deploy_routes", "deploy_paths", "deploy_schemas"]

RETRY_PATH = "/runs/retry-parked"


def add_deploy_routes(
    bp: Blueprint, prefix: str, runtime: Runtime, authorize: Callable[[], None]
) -> None:
    """Add the retry route to ``bp`` (bearer: ``authorize`` refuses a request without it)."""

    async def retry_parked() -> QuartResponse:
        try:
            authorize()
            report = await runtime.retry_parked()
        except Exception as exc:
            return error_response(exc, where="retry_parked")
        return json_response(200, report.to_json())

    bp.add_url_rule(f"{prefix}{RETRY_PATH}", "retry_parked", retry_parked, methods=["POST"])


def deploy_paths(prefix: str, bearer: list[dict[str, list[str]]]) -> dict[str, Any]:
    """The route's OpenAPI path item."""
    return {
        f"{prefix}{RETRY_PATH}": {
            "post": {
                "operationId": "retry_parked",
                "summary": "Replay this server's parked runs with the code it runs now",
                "security": bearer,
                "responses": {
                    "200": _json("which runs go on again, which are still parked", "RetryReport"),
                    "401": _json("no or wrong bearer secret", "Error"),
                    "503": _json("the event log stopped accepting writes", "Error"),
                },
            }
        }
    }


def _json(description: str, schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def deploy_schemas() -> dict[str, Any]:
    ids = {"type": "array", "items": {"type": "string"}}
    return {
        "RetryReport": {
            "type": "object",
            "required": ["resumed", "parked"],
            "properties": {"resumed": ids, "parked": ids},
        }
    }
