"""The listing routes (bearer auth, like the other run routes)::

    GET  PREFIX/runs?status=&workflow=&version=&created_after=&created_before=&limit=&cursor=
    GET  PREFIX/hooks?run_id=&limit=&cursor=
    GET  PREFIX/runs/<run_id>/events?after=&limit=

Each answers ``{"items": [...], "next_cursor": ...}`` (``query.Page.to_json``). A bad filter,
limit or cursor is ``400 InvalidQueryError``, an unknown run ``404``, an unknown query
parameter ``400`` too (a misspelt filter must not silently list everything).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Blueprint, request
from quart import Response as QuartResponse

from ..errors import InvalidQueryError
from ..runtime.runtime import Runtime
from .responses import error_response, json_response

__all__ = ["add_inspect_routes"]

_RUN_FILTERS = frozenset(
    {"status", "workflow", "version", "created_after", "created_before", "limit", "cursor"}
)
_HOOK_FILTERS = frozenset({"run_id", "limit", "cursor"})
_EVENT_FILTERS = frozenset({"after", "limit"})


def add_inspect_routes(
    bp: Blueprint, prefix: str, rt: Runtime, authorize: Callable[[], None]
) -> None:
    """Add the listing routes to ``bp`` (call only when a resume secret is set)."""
    views = _Views(rt, authorize)
    bp.add_url_rule(f"{prefix}/runs", "list_runs", views.list_runs, methods=["GET"])
    bp.add_url_rule(f"{prefix}/hooks", "list_hooks", views.list_hooks, methods=["GET"])
    bp.add_url_rule(
        f"{prefix}/runs/<run_id>/events", "list_events", views.list_events, methods=["GET"]
    )


def _arguments(allowed: frozenset[str]) -> dict[str, Any]:
    """The query string as keyword arguments, each given at most once.

    Raises:
        InvalidQueryError: an unknown or repeated parameter.
    """
    out: dict[str, Any] = {}
    for name in request.args:
        values = request.args.getlist(name)
        if name not in allowed:
            raise InvalidQueryError(
                f"unknown query parameter {name!r}; this route takes {', '.join(sorted(allowed))}"
            )
        if len(values) != 1:
            raise InvalidQueryError(f"query parameter {name!r} is given {len(values)} times")
        out[name] = values[0]
    return out


class _Views:
    def __init__(self, rt: Runtime, authorize: Callable[[], None]) -> None:
        self.rt = rt
        self.authorize = authorize

    async def list_runs(self) -> QuartResponse:
        try:
            self.authorize()
            page = await self.rt.list_runs(**_arguments(_RUN_FILTERS))
            return json_response(200, page.to_json())
        except Exception as exc:
            return error_response(exc, where="list_runs")

    async def list_hooks(self) -> QuartResponse:
        try:
            self.authorize()
            arguments = _arguments(_HOOK_FILTERS)
            run_id = arguments.pop("run_id", None)
            page = await self.rt.list_hooks(run_id, **arguments)
            return json_response(200, page.to_json())
        except Exception as exc:
            return error_response(exc, where="list_hooks")

    async def list_events(self, run_id: str) -> QuartResponse:
        try:
            self.authorize()
            page = await self.rt.list_events(run_id, **_arguments(_EVENT_FILTERS))
            return json_response(200, page.to_json())
        except Exception as exc:
            return error_response(exc, where="list_events")
