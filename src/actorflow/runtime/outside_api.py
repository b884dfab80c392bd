"""The outside API of ``Runtime``, documented in one place: each method hands over to a part.

Kept apart from ``runtime.py`` so that the lifecycle (building the parts, opening, recovering,
shutting down) and the API users call each stay a size a reader takes in at once.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from ..errors import WorkflowDefinitionError
from .core.ops import HookHandle
from .front import Front
from .metrics import RuntimeMetrics
from .records import Hook, Run
from .retention import CompactionReport, Retention, RetentionStatus
from .webhook_request import Request, Response
from .workflow import WorkflowFunction

__all__ = ["OutsideAPI"]


class OutsideAPI:
    """What ``Runtime`` offers its users for runs, hooks and webhooks."""

    front: Front
    metrics: RuntimeMetrics
    retention: Retention

    async def start(
        self, workflow: WorkflowFunction[..., Any] | str, *args: Any, **kwargs: Any
    ) -> Run:
        """Start a run: durably records ``run_created`` and returns before the run finishes.

        Raises:
            WorkflowDefinitionError: an unknown workflow name, not a workflow, or arguments
                that do not fit its signature (nothing committed).
            SerializationError: the arguments cannot be stored (nothing committed).
            OverloadedError: the log backlog is full; retry later.
            LogWriteError: the log failed.
        """
        return await self.front.start(None, workflow, args, kwargs)

    async def start_once(
        self,
        idempotency_key: str,
        workflow: WorkflowFunction[..., Any] | str,
        *args: Any,
        **kwargs: Any,
    ) -> Run:
        """Start a run unless one was started with ``idempotency_key``: then return that run.

        For callers that retry a start whose answer they did not get (``POST .../runs`` with
        an ``Idempotency-Key`` header): the retry returns the first run instead of a second.

        Raises:
            The errors of ``start``.
        """
        if not isinstance(idempotency_key, str) or not idempotency_key:
            raise WorkflowDefinitionError("idempotency_key must be a non-empty string")
        return await self.front.start(idempotency_key, workflow, args, kwargs)

    def get_run(self, run_id: str) -> Run:
        """A handle on a run (reading a missing run raises ``WorkflowRunNotFoundError``)."""
        return self.front.get_run(run_id)

    async def get_hook_by_token(self, token: str) -> Hook:
        """The live hook that owns ``token``.

        Raises:
            HookNotFoundError: no live hook owns it.
        """
        return await self.front.get_hook_by_token(token)

    async def resume_hook(
        self,
        token_or_hook: str | Hook | HookHandle[Any],
        payload: Any,
        *,
        encryption_key: bytes | str | None = None,
        idempotency_key: str | None = None,
    ) -> Hook:
        """Deliver ``payload`` to the hook: durable before it returns; does not wait for the run.

        Raises:
            HookNotFoundError: unknown token, disposed hook, ended run, or a webhook's token.
            SerializationError: the payload cannot be stored.
            IdempotencyKeyConflictError: the key was used before with another payload.
            OverloadedError: the run's mailbox or the log backlog is full; retry later.
            LogWriteError: the log failed.
            (Nothing is committed when any of these is raised.)
        """
        began = perf_counter()
        try:
            hook = await self.front.resume_hook(
                token_or_hook, payload, encryption_key=encryption_key,
                idempotency_key=idempotency_key,
            )  # fmt: skip
        except Exception as exc:  # cancellation is nobody's outcome
            self.metrics.resume_failed(exc)
            raise
        self.metrics.resumed(perf_counter() - began)
        return hook

    async def resume_webhook(self, token: str, request: Request | Any) -> Response:
        """Deliver an HTTP request to the webhook owning ``token``; the response to send back.

        Raises:
            HookNotFoundError: unknown token, disposed webhook, ended run, or a plain hook's
                token (reported alike, so tokens cannot be probed).
            WebhookSignatureError: the request failed the webhook's signature check.
            OverloadedError, SerializationError, LogWriteError: nothing was committed.
        """
        with self.metrics.webhook():
            return await self.front.resume_webhook(token, request)

    async def cancel_run(self, run_id: str, reason: str | None = None) -> None:
        """Cancel a run; a no-op if it has ended. Returns once the cancel is durable.

        Raises:
            WorkflowRunNotFoundError: no run has this id.
            LogWriteError: the log failed.
        """
        await self.front.cancel_run(run_id, reason)

    # -- retention -----------------------------------------------------------------------------

    async def compact(self) -> CompactionReport:
        """Expire finished runs past retention and drop their records from the log, now, unpaced
        (see ``retention.py``); on PostgreSQL, delete their rows in batches."""
        return await self.retention.compact()

    def retention_status(self) -> RetentionStatus:
        """Runs kept (live, finished and retained), the log's size, and the last pass."""
        return self.retention.status()
