"""The outside API as functions acting on the current runtime (like the Workflow SDK's
``workflow/api``). Use them inside ``async with af.Runtime(...)``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .runtime.core.ops import HookHandle
from .runtime.query import DEFAULT_LIMIT, EventRecord, HookSummary, Page, RunSummary
from .runtime.records import Hook, Run
from .runtime.runtime import current_runtime
from .runtime.webhook_request import Request, Response
from .runtime.workflow import WorkflowFunction

__all__ = [
    "get_hook_by_token",
    "get_run",
    "list_events",
    "list_hooks",
    "list_runs",
    "resume_hook",
    "resume_webhook",
    "start",
]


async def start(workflow: WorkflowFunction[..., Any] | str, *args: Any, **kwargs: Any) -> Run:
    """Start a run of ``workflow``; returns once ``run_created`` is durable.

    Raises:
        WorkflowDefinitionError, SerializationError, OverloadedError, LogWriteError.
    """
    return await current_runtime().start(workflow, *args, **kwargs)


def get_run(run_id: str) -> Run:
    """A handle on a run; reading a missing run raises ``WorkflowRunNotFoundError``."""
    return current_runtime().get_run(run_id)


async def resume_hook(
    token_or_hook: str | Hook | HookHandle[Any],
    payload: Any,
    *,
    encryption_key: bytes | str | None = None,
    idempotency_key: str | None = None,
) -> Hook:
    """Deliver ``payload`` to a hook; returns once ``hook_received`` is on disk.

    Raises:
        HookNotFoundError, SerializationError, IdempotencyKeyConflictError, OverloadedError,
        LogWriteError (nothing committed for any of them).
    """
    return await current_runtime().resume_hook(
        token_or_hook, payload, encryption_key=encryption_key, idempotency_key=idempotency_key
    )


async def resume_webhook(token: str, request: Request | Any) -> Response:
    """Deliver an HTTP request to a webhook; returns the response ``respond_with`` chose.

    Raises:
        HookNotFoundError: unknown token, or the token of a plain hook.
        WebhookSignatureError: the request failed the webhook's signature check.
    """
    return await current_runtime().resume_webhook(token, request)


async def get_hook_by_token(token: str) -> Hook:
    """The live hook that owns ``token``.

    Raises:
        HookNotFoundError: no live hook owns it.
    """
    return await current_runtime().get_hook_by_token(token)


async def list_runs(
    *,
    status: str | None = None,
    workflow: str | None = None,
    version: str | None = None,
    created_after: datetime | float | str | None = None,
    created_before: datetime | float | str | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[RunSummary]:
    """Runs, newest first, one page at a time (see ``Runtime.list_runs``).

    Raises:
        InvalidQueryError: a bad filter, limit or cursor (nothing was read).
    """
    return await current_runtime().list_runs(
        status=status,
        workflow=workflow,
        version=version,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        cursor=cursor,
    )


async def list_hooks(
    run_id: str | None = None, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> Page[HookSummary]:
    """Live hooks, of one run or all (see ``Runtime.list_hooks``).

    Raises:
        WorkflowRunNotFoundError, InvalidQueryError.
    """
    return await current_runtime().list_hooks(run_id, limit=limit, cursor=cursor)


async def list_events(
    run_id: str, *, after: int | str = 0, limit: int = DEFAULT_LIMIT
) -> Page[EventRecord]:
    """A run's events in log order (see ``Runtime.list_events``).

    Raises:
        WorkflowRunNotFoundError, InvalidQueryError.
    """
    return await current_runtime().list_events(run_id, after=after, limit=limit)
