"""The query API of ``Runtime``: ``list_runs``, ``list_hooks``, ``list_events``.

A base class of ``Runtime``, so the runtime's own class stays about its life cycle. Arguments
are checked here, once, before any catalog sees them; what is listed is durable (the journal
is flushed first), so a listing never shows a run, hook or event a crash could take back.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from ..errors import InvalidQueryError
from .catalog import Catalog
from .query import (
    DEFAULT_LIMIT,
    EventRecord,
    HookSummary,
    Page,
    RunSummary,
    check_after,
    check_limit,
    check_run_query,
    decode_hook_cursor,
)

if TYPE_CHECKING:
    from .front import Front

__all__ = ["Inspection"]


class Inspection:
    """Listings over the runtime's store (mixed into ``Runtime``)."""

    catalog: Catalog
    front: Front

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        version: str | None = None,
        created_after: datetime | float | str | None = None,
        created_before: datetime | float | str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> Page[RunSummary]:
        """Runs, newest first, at most ``limit`` (1-1000) per page.

        Filters: ``status`` (``pending``, ``running``, ``completed``, ``failed``,
        ``cancelled``), ``workflow`` name, ``version`` the run was started under, and creation
        time (aware ``datetime``, ISO 8601 string or epoch seconds; ``created_after`` and
        ``created_before`` are exclusive). Pass a page's ``next_cursor`` as ``cursor`` for the
        page after it: a run started meanwhile is neither repeated nor skips another.

        Raises:
            InvalidQueryError: a bad filter, limit or cursor (nothing was read).
        """
        query = check_run_query(
            status=status,
            workflow=workflow,
            version=version,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            cursor=cursor,
        )
        await self.front.settled()
        return await self.catalog.list_runs(query)

    async def list_hooks(
        self, run_id: str | None = None, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
    ) -> Page[HookSummary]:
        """Live hooks, of one run or of all, ordered by token, ``limit`` (1-1000) per page.

        Raises:
            WorkflowRunNotFoundError: ``run_id`` is given and no run has it.
            InvalidQueryError: a bad limit or cursor, or a ``run_id`` that is not a string.
        """
        if run_id is not None and (not isinstance(run_id, str) or not run_id):
            raise InvalidQueryError(f"run_id must be a run's id (wrun_...), not {run_id!r}")
        checked = check_limit(limit)
        after_token = decode_hook_cursor(cursor)
        # A hook's token (a webhook's URL) is shown only once its hook_created is on disk.
        await self.front.settled()
        return await self.catalog.list_hooks(run_id, checked, after_token)

    async def list_events(
        self, run_id: str, *, after: int | str = 0, limit: int = DEFAULT_LIMIT
    ) -> Page[EventRecord]:
        """A run's events in log order: those with ``seq`` above ``after``, at most ``limit``.

        Every event type shows, including ones this version does not know. User values are
        decrypted with the runtime's keys, or shown as ``"encrypted"`` without them.
        ``next_cursor`` is the ``after`` of the next page.

        Raises:
            WorkflowRunNotFoundError: no run has this id.
            InvalidQueryError: a bad ``after`` or ``limit``.
        """
        if not isinstance(run_id, str) or not run_id:
            raise InvalidQueryError(f"run_id must be a run's id (wrun_...), not {run_id!r}")
        checked_after = check_after(after)
        checked = check_limit(limit)
        await self.front.settled()
        return await self.catalog.list_events(run_id, checked_after, checked)
