"""Reading a run's streams from PostgreSQL, for a reader on a node that does not own the run.

Stream records are rows of ``events`` like the run's other events (``type`` ``stream_chunk`` or
``stream_closed``, ``correlation_id`` the namespace), found through the ``(run_id, position)``
index. Only the run's owner appends them, one transaction after another, so within a run
positions become visible in order and a reader that continues after the last position it read
misses nothing. The owner's append sends ``NOTIFY`` ``stream:<run id>`` on the schema's channel
(``postgres_cluster.py``); readers poll too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import psycopg
from psycopg import sql

__all__ = ["StreamQueries", "StreamReads", "namespaces", "rows_after"]


class StreamQueries:
    """The SQL, rendered once for a schema."""

    def __init__(self, schema: str) -> None:
        events = sql.Identifier(schema, "events")
        runs = sql.Identifier(schema, "runs")

        def render(template: str) -> bytes:
            return sql.SQL(template).format(events=events, runs=runs).as_bytes(None)

        self.status = render("SELECT status FROM {runs} WHERE run_id = %s")
        self.rows = render(
            "SELECT position, record FROM {events} WHERE run_id = %s AND position > %s"
            " AND correlation_id = %s AND type IN ('stream_chunk', 'stream_closed')"
            " ORDER BY position LIMIT %s"
        )
        # Where chunk number n - 1 sits: a reader starting at n continues after it.
        self.before = render(
            "SELECT position FROM {events} WHERE run_id = %s AND correlation_id = %s"
            " AND type = 'stream_chunk' ORDER BY position OFFSET %s LIMIT 1"
        )
        self.namespaces = render(
            "SELECT DISTINCT correlation_id FROM {events} WHERE run_id = %s"
            " AND type IN ('stream_chunk', 'stream_closed') ORDER BY correlation_id"
        )


class Pool(Protocol):
    """A node's connection pool (``postgres_cluster.Directory``)."""

    schema: str

    def _call(self, what: str, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any: ...


class StreamReads:
    """Stream reads on a node's pooled connections (blocking: run them in a worker thread).

    Kept out of ``Directory``, whose one job is the cluster's own bookkeeping, and which
    lends its pool through ``_call`` here only.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._q = StreamQueries(pool.schema)

    def rows(
        self, run_id: str, namespace: str, after: int, skip: int, limit: int
    ) -> tuple[list[tuple[int, bytes]], str | None]:
        q = self._q
        found: tuple[list[tuple[int, bytes]], str | None] = self._pool._call(
            "stream read", lambda c: rows_after(c, q, run_id, namespace, after, skip, limit)
        )
        return found

    def namespaces(self, run_id: str) -> list[str] | None:
        q = self._q
        found: list[str] | None = self._pool._call(
            "stream read", lambda c: namespaces(c, q, run_id)
        )
        return found


def rows_after(
    conn: psycopg.Connection[Any],
    q: StreamQueries,
    run_id: str,
    namespace: str,
    after: int,
    skip: int,
    limit: int,
) -> tuple[list[tuple[int, bytes]], str | None]:
    """The run's status (read first), then up to ``limit`` stream records after ``after``
    (``after < 0``: from chunk number ``skip``)."""
    with conn.transaction():
        row = conn.execute(q.status, (run_id,)).fetchone()
        if row is None:
            return [], None
        status = str(row[0])
        if after < 0 and skip > 0:
            found = conn.execute(q.before, (run_id, namespace, skip - 1)).fetchone()
            if found is None:
                # Fewer chunks than skip so far: wait for them (nothing to return yet).
                return [], status if status in ("pending", "running") else status
            after = int(found[0])
        rows = conn.execute(q.rows, (run_id, after, namespace, limit)).fetchall()
    return [(int(p), bytes(r)) for p, r in rows], status


def namespaces(conn: psycopg.Connection[Any], q: StreamQueries, run_id: str) -> list[str] | None:
    with conn.transaction():
        if conn.execute(q.status, (run_id,)).fetchone() is None:
            return None
        return [str(r[0]) for r in conn.execute(q.namespaces, (run_id,))]
