"""Listings over the shared PostgreSQL schema: every run, whichever node owns it.

``runs`` carries the listing columns (schema version 3: ``created``, ``started``, ``ended``,
``version``), written in the transaction of the events that set them, and indexes on
``(status, run_id)`` and ``(workflow, run_id)``: a page of failed runs, newest first, is a
backward index scan that stops after ``limit + 1`` rows. Queries run in a worker thread on a
connection of the catalog's own (autocommit), so they never wait behind the log's appends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import orjson
import psycopg
from psycopg import sql

from ..errors import StorageError, WorkflowRunNotFoundError
from .describe import event_record
from .log.postgres import _connect
from .payloads import Payloads
from .query import (
    EventRecord,
    HookSummary,
    Page,
    RunQuery,
    RunSummary,
    encode_hook_cursor,
    from_timestamp,
    page_of,
)

__all__ = ["PostgresCatalog"]

#: (token, hook id) -> payloads buffered in this process's actor, if it owns the run.
Buffered = Callable[[str, str], int | None]


class PostgresCatalog:
    """Listings from the shared schema's indexed columns."""

    def __init__(
        self, dsn: str, schema: str, payloads: Payloads, buffered: Buffered | None = None
    ) -> None:
        self._dsn = dsn
        self._schema = schema
        self._where = f"(schema {schema})"
        self._payloads = payloads
        self._buffered = buffered or (lambda token, hook_id: None)
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

        def t(name: str) -> sql.Identifier:
            return sql.Identifier(schema, name)

        self._runs = t("runs")
        self._hooks = t("hooks")
        self._events = t("events")

    def _call(self, what: str, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        with self._lock:
            try:
                conn = self._conn
                if conn is None or conn.closed or conn.broken:
                    conn = self._conn = _connect(self._dsn, self._where, autocommit=True)
                return fn(conn)
            except psycopg.Error as exc:
                raise StorageError(f"PostgreSQL {what} failed {self._where}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- runs ------------------------------------------------------------------------------

    async def list_runs(self, query: RunQuery) -> Page[RunSummary]:
        return await anyio.to_thread.run_sync(self.runs_page, query)

    def runs_page(self, query: RunQuery) -> Page[RunSummary]:
        """``list_runs``, blocking (for tools without an event loop)."""
        where: list[sql.Composable] = [sql.SQL("created IS NOT NULL")]
        params: dict[str, Any] = {"limit": query.limit + 1}
        for column in ("status", "workflow", "version"):
            value = getattr(query, column)
            if value is not None:
                where.append(sql.SQL("{} = %({})s").format(sql.Identifier(column),
                                                           sql.SQL(column)))  # fmt: skip
                params[column] = value
        if query.cursor is not None:
            where.append(sql.SQL("run_id < %(cursor)s"))
            params["cursor"] = query.cursor
        # Whole microseconds, as the query's bounds are (query.to_micros).
        if query.created_after is not None:
            where.append(sql.SQL("round((created * 1000000)::numeric) > %(after)s"))
            params["after"] = query.created_after
        if query.created_before is not None:
            where.append(sql.SQL("round((created * 1000000)::numeric) < %(before)s"))
            params["before"] = query.created_before
        statement = sql.SQL(
            "SELECT run_id, workflow, status, created, started, ended, version FROM {} "
            "WHERE {} ORDER BY run_id DESC LIMIT %(limit)s"
        ).format(self._runs, sql.SQL(" AND ").join(where))

        def run(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            return conn.execute(statement, params).fetchall()

        rows: list[tuple[Any, ...]] = self._call("listing", run)
        items = [
            RunSummary(
                run_id=run_id,
                workflow_name=workflow,
                status=status,
                created_at=from_timestamp(created),  # type: ignore[arg-type]
                started_at=from_timestamp(started),
                completed_at=from_timestamp(ended),
                version=version,
            )
            for run_id, workflow, status, created, started, ended, version in rows
        ]
        return page_of(items, query.limit, lambda last: last.run_id)

    def run_records(self, run_id: str) -> list[tuple[int, bytes]]:
        """Every record of one run, in log order (empty: no such run)."""
        statement = sql.SQL(
            "SELECT position, record FROM {} WHERE run_id = %s ORDER BY position"
        ).format(self._events)

        def run(conn: psycopg.Connection[Any]) -> list[tuple[int, bytes]]:
            return [(p, bytes(r)) for p, r in conn.execute(statement, (run_id,))]

        result: list[tuple[int, bytes]] = self._call("read", run)
        return result

    def _check_run(self, conn: psycopg.Connection[Any], run_id: str) -> None:
        found = conn.execute(
            sql.SQL("SELECT 1 FROM {} WHERE run_id = %s AND created IS NOT NULL").format(
                self._runs
            ),
            (run_id,),
        ).fetchone()
        if found is None:
            raise WorkflowRunNotFoundError(run_id)

    # -- hooks -----------------------------------------------------------------------------

    async def list_hooks(
        self, run_id: str | None, limit: int, after_token: str | None
    ) -> Page[HookSummary]:
        return await anyio.to_thread.run_sync(self.hooks_page, run_id, limit, after_token)

    def hooks_page(
        self, run_id: str | None, limit: int, after_token: str | None
    ) -> Page[HookSummary]:
        """``list_hooks``, blocking."""
        where: list[sql.Composable] = [sql.SQL("h.event_id IS NOT NULL")]
        params: dict[str, Any] = {"limit": limit + 1}
        if run_id is not None:
            where.append(sql.SQL("h.run_id = %(run)s"))
            params["run"] = run_id
        if after_token is not None:
            where.append(sql.SQL("h.token > %(after)s"))
            params["after"] = after_token
        statement = sql.SQL(
            "SELECT h.token, h.hook_id, h.run_id, e.record,"
            " (SELECT count(*) FROM {events} d WHERE d.run_id = h.run_id"
            "  AND d.type = 'hook_received' AND d.correlation_id = h.hook_id)"
            " FROM {hooks} h JOIN {events} e ON e.event_id = h.event_id"
            " WHERE {where} ORDER BY h.token LIMIT %(limit)s"
        ).format(events=self._events, hooks=self._hooks, where=sql.SQL(" AND ").join(where))

        def run(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            if run_id is not None:
                self._check_run(conn, run_id)
            return conn.execute(statement, params).fetchall()

        rows: list[tuple[Any, ...]] = self._call("listing", run)
        items = []
        for token, hook_id, owner_run, record, received in rows:
            created = orjson.loads(bytes(record))
            items.append(
                HookSummary(
                    token=token,
                    hook_id=hook_id,
                    run_id=owner_run,
                    kind="webhook" if created[5].get("webhook") is not None else "hook",
                    created_at=from_timestamp(created[4]),  # type: ignore[arg-type]
                    received=int(received),
                    buffered=self._buffered(token, hook_id),
                )
            )
        return page_of(items, limit, lambda last: encode_hook_cursor(last.token))

    # -- events ----------------------------------------------------------------------------

    async def list_events(self, run_id: str, after: int, limit: int) -> Page[EventRecord]:
        return await anyio.to_thread.run_sync(self.events_page, run_id, after, limit)

    def events_page(self, run_id: str, after: int, limit: int) -> Page[EventRecord]:
        """``list_events``, blocking."""
        statement = sql.SQL(
            "SELECT position, record FROM {} WHERE run_id = %s ORDER BY position OFFSET %s LIMIT %s"
        ).format(self._events)

        def run(conn: psycopg.Connection[Any]) -> list[tuple[int, bytes]]:
            rows = [(p, bytes(r)) for p, r in conn.execute(statement, (run_id, after, limit + 1))]
            if not rows:
                self._check_run(conn, run_id)
            return rows

        rows: list[tuple[int, bytes]] = self._call("read", run)
        payloads = self._payloads
        items = [
            event_record(after + i + 1, record, position, payloads)
            for i, (position, record) in enumerate(rows)
        ]
        return page_of(items, limit, lambda last: str(last.seq))
