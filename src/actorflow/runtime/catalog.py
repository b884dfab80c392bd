"""Where listings come from: one interface, chosen once with the store.

``MemoryCatalog`` answers from the fold (the embedded file log, or any store one process owns):
runs from the sorted ``RunIndex``, hooks from the token index, a run's events by reading the
positions the fold keeps. ``log.postgres_catalog.PostgresCatalog`` answers from indexed columns
of the shared schema, so every process lists every run, whoever owns it.

Callers check their arguments first (``query.check_*``): a catalog gets valid requests only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import anyio.to_thread

from ..errors import WorkflowRunNotFoundError
from .backend import shared_log
from .describe import event_record, hook_summary, run_summary
from .log.store import EventStore
from .payloads import Payloads
from .query import EventRecord, HookSummary, Page, RunQuery, RunSummary, encode_hook_cursor, page_of
from .state import HookEntry, State

__all__ = ["Catalog", "MemoryCatalog", "shared_catalog"]


class Catalog(Protocol):
    """Listings over a store."""

    async def list_runs(self, query: RunQuery) -> Page[RunSummary]:
        """Runs matching ``query``, newest first."""
        ...

    async def list_hooks(
        self, run_id: str | None, limit: int, after_token: str | None
    ) -> Page[HookSummary]:
        """Live hooks (of one run, or all), by token, after ``after_token``.

        Raises:
            WorkflowRunNotFoundError: ``run_id`` is given and no run has it.
        """
        ...

    async def list_events(self, run_id: str, after: int, limit: int) -> Page[EventRecord]:
        """A run's events with ``seq`` above ``after``, in log order.

        Raises:
            WorkflowRunNotFoundError: no run has this id.
        """
        ...

    def close(self) -> None: ...


class MemoryCatalog:
    """Listings from the fold of the log, held in this process."""

    def __init__(
        self,
        state: State,
        read: Callable[[list[int]], Sequence[bytes]],
        payloads: Payloads,
        *,
        live: bool = True,
    ) -> None:
        self._state = state
        self._read = read
        self._payloads = payloads
        #: False for a fold read from a log another process runs (the CLI's --data-dir): no
        #: actor here counts the payloads its workflow has not taken yet.
        self._live = live

    async def list_runs(self, query: RunQuery) -> Page[RunSummary]:
        return self.runs_page(query)

    def runs_page(self, query: RunQuery) -> Page[RunSummary]:
        """``list_runs`` without awaiting (the work is in memory and bounded by the page)."""
        state = self._state
        index = state.index
        if not index.built:
            index.build(state.runs.values())
        runs = state.runs
        status = query.status
        # The index walks one list; the filters it did not walk are checked run by run.
        check_status = status is not None
        check_rest = (
            query.workflow is not None
            or query.version is not None
            or query.created_after is not None
            or query.created_before is not None
        )
        found: list[RunSummary] = []
        want = query.limit + 1
        for run_id in index.newest_first(status, query.workflow, query.cursor):
            run = runs.get(run_id)
            if run is None:
                continue
            if check_status and run.status != status:
                continue
            if check_rest and not query.matches(run.workflow_name, run.version, run.created_at):
                continue
            found.append(run_summary(run))
            if len(found) == want:
                break
        return page_of(found, query.limit, lambda last: last.run_id)

    async def list_hooks(
        self, run_id: str | None, limit: int, after_token: str | None
    ) -> Page[HookSummary]:
        state = self._state
        entries: list[HookEntry]
        if run_id is not None:
            run = state.runs.get(run_id)
            if run is None:
                raise WorkflowRunNotFoundError(run_id)
            tokens = state.tokens
            entries = [tokens[t] for t in run.hooks or () if t in tokens]
        else:
            entries = list(state.tokens.values())
        # Sorted per call: O(hooks log hooks), fine for the live hooks of a process; runs
        # are what grows without bound, and they have the index.
        entries.sort(key=lambda e: e.token)
        if after_token is not None:
            entries = [e for e in entries if e.token > after_token]
        chosen = [hook_summary(e, known=self._live) for e in entries[: limit + 1]]
        return page_of(chosen, limit, lambda last: encode_hook_cursor(last.token))

    async def list_events(self, run_id: str, after: int, limit: int) -> Page[EventRecord]:
        run = self._state.runs.get(run_id)
        if run is None:
            raise WorkflowRunNotFoundError(run_id)
        positions = list(run.positions[after : after + limit + 1])
        records = await anyio.to_thread.run_sync(self._read, positions) if positions else []
        payloads = self._payloads
        items = [
            event_record(after + i + 1, record, position, payloads)
            for i, (position, record) in enumerate(zip(positions, records, strict=True))
        ]
        return page_of(items, limit, lambda last: str(last.seq))

    def close(self) -> None:
        pass


def shared_catalog(store: EventStore, state: State, payloads: Payloads) -> Catalog | None:
    """The PostgreSQL catalog over a shared PostgreSQL log, else ``None``."""
    log = shared_log(store)
    if log is None:
        return None
    from .postgres_catalog import PostgresCatalog

    def buffered(token: str, hook_id: str) -> int | None:
        entry = state.tokens.get(token)
        if entry is None or entry.hook_id != hook_id or entry.remote is not None:
            return None  # owned by another node: only it knows
        return entry.untaken

    return PostgresCatalog(log.dsn, log.schema, payloads, buffered)
