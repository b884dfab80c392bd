"""Retention on PostgreSQL: what runs that ended before a cutoff leave behind, deleted in batches.

A prune removes everything of a run whose end (``runs.ended_at``, the time of its terminal event
in the runtime's clock) lies before the cutoff: its events, its ``runs`` row (which frees its
``start_once`` key), live-hook and timer rows (normally gone already when it ended), leftovers
in ``inbox``, and the ``delivery_keys`` of its deliveries. Then the rows of nodes whose lease ran
out long ago and that own no unfinished run. Nothing of a run that has not ended is touched.
First, it dates the ended runs that have no ``ended_at`` (a node still running the previous
version ended them during a rolling upgrade) from their terminal events, so none is kept forever.

How it stays out of the way of the nodes that keep working:

- **Whole runs per transaction.** Each batch picks up to ``batch_size`` ended runs and deletes
  all of theirs in one statement, in its own transaction. A crash or an error between (or
  inside) batches leaves every run either complete or gone, never events without their row or a
  row without its events, and the next prune goes on from there.
- **No waiting on busy rows.** The batch locks its runs' rows ``FOR UPDATE SKIP LOCKED``: a run
  some transaction holds (an append, a cancel on its way to the inbox) is left for the next
  prune, and since appends lock only live runs' rows, an append never waits for a prune. Rows in
  other tables are deleted only for the locked, ended runs, which no append writes.
- **Short transactions.** One round trip per batch, every row found through an index
  (``runs_ended`` on ``ended_at``, ``events_run_position``, ``delivery_keys_event``, ...): the
  run ids are one array, so the planner has no join to answer with a scan of a whole table
  (``benchmarks/postgres_prune.py`` prints the plan's whole-table reads at 200,000 runs).
- **Asynchronous commit.** The prune's session sets ``synchronous_commit = off``: a server crash
  may bring back the last batches deleted, each whole (a commit is atomic either way), and the
  next prune deletes them again; each batch is spared waiting for its WAL flush.

The ``runs`` row of an expired run is gone, so readers answer as for a run that never existed:
``Directory.run_events`` finds no events, ``owner_of`` no row, a delivery with a pruned
idempotency key finds no key (and, its run having ended, no live hook either).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import sql

from actorflow.errors import StorageError
from actorflow.runtime.log.postgres import _connect

__all__ = ["DEAD_NODE_SECONDS", "PruneReport", "prune_batch", "prune_expired"]

#: How long a node's lease must have been over before a prune forgets the node. Far longer than
#: any lease: a node paused that long is fenced already, and finds its row gone as it would find
#: itself fenced (its renewal fails and it stops).
DEAD_NODE_SECONDS = 3600.0

_ENDED = "('completed', 'failed', 'cancelled')"
_LIVE = "('pending', 'running')"


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What a prune deleted: rows per table, and ``batches``, the transactions that deleted
    something (each holds whole runs, or dead nodes)."""

    runs: int = 0
    events: int = 0
    hooks: int = 0
    timers: int = 0
    inbox: int = 0
    delivery_keys: int = 0
    nodes: int = 0
    batches: int = 0
    #: Ended runs found without ``ended_at`` (ended by a node of the previous version during
    #: an upgrade), dated from their terminal event before the batches.
    dated: int = 0

    def __add__(self, other: PruneReport) -> PruneReport:
        return PruneReport(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(PruneReport))
        )


class _PruneQueries:
    """The prune's SQL, rendered once for its schema."""

    __slots__ = ("batch", "date", "nodes")

    def __init__(self, schema: str) -> None:
        def t(name: str) -> sql.Identifier:
            return sql.Identifier(schema, name)

        def render(template: str, **tables: str) -> bytes:
            return sql.SQL(template).format(**{k: t(v) for k, v in tables.items()}).as_bytes(None)

        # Every CTE sees the same snapshot, so the keys and inbox rows are found through events
        # and inbox rows that the sibling CTEs delete in the same statement. The picked ids are
        # one array (an InitPlan), so that every delete is an index lookup, `= ANY(ids)`, and
        # the planner never hashes a whole table to join it with a batch.
        self.batch = render(
            "WITH picked AS (SELECT coalesce(array_agg(run_id), '{{}}') AS ids FROM ("
            " SELECT run_id FROM {runs}"
            f" WHERE ended_at < %(before)s AND status IN {_ENDED}"
            " ORDER BY ended_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS batch),"
            " keys AS (DELETE FROM {keys} WHERE event_id = ANY(ARRAY("
            "  SELECT event_id FROM {events} WHERE run_id = ANY((SELECT ids FROM picked)::text[])"
            "  UNION ALL"
            "  SELECT event_id FROM {inbox} WHERE run_id = ANY((SELECT ids FROM picked)::text[])))"
            " RETURNING 1),"
            " inbox AS (DELETE FROM {inbox} WHERE run_id = ANY((SELECT ids FROM picked)::text[])"
            " RETURNING 1),"
            " hooks AS (DELETE FROM {hooks} WHERE run_id = ANY((SELECT ids FROM picked)::text[])"
            " RETURNING 1),"
            " timers AS (DELETE FROM {timers} WHERE run_id = ANY((SELECT ids FROM picked)::text[])"
            " RETURNING 1),"
            " events AS (DELETE FROM {events} WHERE run_id = ANY((SELECT ids FROM picked)::text[])"
            " RETURNING 1),"
            " gone AS (DELETE FROM {runs} WHERE run_id = ANY((SELECT ids FROM picked)::text[])"
            " RETURNING 1)"
            " SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM events),"
            " (SELECT count(*) FROM hooks), (SELECT count(*) FROM timers),"
            " (SELECT count(*) FROM inbox), (SELECT count(*) FROM keys)",
            runs="runs",
            keys="delivery_keys",
            events="events",
            inbox="inbox",
            hooks="hooks",
            timers="timers",
        )
        self.date = render(
            "WITH undated AS ("
            " SELECT run_id FROM {runs}"
            f" WHERE ended_at IS NULL AND status IN {_ENDED}"
            " LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
            " UPDATE {runs} r SET ended_at = coalesce(("
            "  SELECT (convert_from(e.record, 'UTF8')::json ->> 4)::double precision"
            "  FROM {events} e WHERE e.run_id = r.run_id"
            "   AND e.type IN ('run_completed', 'run_failed', 'run_cancelled')"
            "  ORDER BY e.position LIMIT 1), extract(epoch FROM now()))"
            " FROM undated WHERE r.run_id = undated.run_id RETURNING 1",
            runs="runs",
            events="events",
        )
        # A node that owns no unfinished run holds nothing another node needs (its inbox
        # claims are released by whoever claims the runs, and it has none).
        self.nodes = render(
            "WITH dead AS ("
            " SELECT node_id FROM {nodes} n"
            " WHERE n.lease_until < now() - make_interval(secs => %(after)s)"
            f" AND NOT EXISTS (SELECT 1 FROM {{runs}} r WHERE r.owner = n.node_id"
            f"  AND r.status IN {_LIVE})"
            " LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
            " DELETE FROM {nodes} WHERE node_id IN (SELECT node_id FROM dead) RETURNING 1",
            nodes="nodes",
            runs="runs",
        )


@lru_cache(maxsize=64)
def _queries(schema: str) -> _PruneQueries:
    return _PruneQueries(schema)


def prune_batch(
    conn: psycopg.Connection[Any], schema: str, ended_before: float, batch_size: int
) -> PruneReport:
    """Delete up to ``batch_size`` runs that ended before ``ended_before``, and all of theirs,
    in ``conn``'s open transaction; the caller commits (that is what makes a batch whole).

    Raises:
        psycopg.Error: the database failed (the caller translates it).
    """
    params = {"before": ended_before, "limit": batch_size}
    row = conn.execute(_queries(schema).batch, params).fetchone()
    assert row is not None
    runs, events, hooks, timers, inbox, keys = (int(value) for value in row)
    return PruneReport(runs, events, hooks, timers, inbox, keys, 0, 1 if runs else 0)


def prune_expired(
    dsn: str,
    schema: str,
    ended_before: float,
    *,
    batch_size: int = 1000,
    dead_node_seconds: float = DEAD_NODE_SECONDS,
    where: str = "",
    on_batch: Callable[[PruneReport], None] | None = None,
) -> PruneReport:
    """Delete, batch after batch, what runs that ended before ``ended_before`` (unix seconds, in
    the runtime's clock) left, then the rows of nodes dead for ``dead_node_seconds``.

    Each batch is its own transaction on a connection of the prune's own. ``on_batch`` is
    called after each batch has committed, with what it deleted.

    Raises:
        ValueError: ``ended_before`` is not a finite number, or ``batch_size`` not positive.
        StorageError: the database failed; batches committed before stay deleted, the batch
            under way is not (its runs are whole), and a later prune goes on from there.
    """
    if isinstance(ended_before, bool) or not isinstance(ended_before, int | float):
        raise ValueError(f"ended_before must be unix seconds, not {ended_before!r}")
    if not math.isfinite(ended_before):
        raise ValueError(f"ended_before must be a finite number of seconds, not {ended_before}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
    q = _queries(schema)
    total = PruneReport()
    conn = _connect(dsn, where)
    try:
        if conn.info.parameter_status("application_name") == "actorflow":  # the DSN chose none
            # Named apart from the nodes' connections, for whoever watches pg_stat_activity.
            conn.execute("SET application_name = 'actorflow-prune'")
        conn.execute("SET synchronous_commit = off")
        conn.commit()
        while True:
            with conn.transaction():
                dated = len(conn.execute(q.date, {"limit": batch_size}).fetchall())
            total += PruneReport(dated=dated)
            if dated < batch_size:
                break
        while True:
            with conn.transaction():
                done = prune_batch(conn, schema, float(ended_before), batch_size)
            total += done
            if done.runs and on_batch is not None:
                on_batch(done)
            if done.runs < batch_size:
                break
        while True:
            with conn.transaction():
                params = {"after": dead_node_seconds, "limit": batch_size}
                nodes = len(conn.execute(q.nodes, params).fetchall())
            done = PruneReport(nodes=nodes, batches=1 if nodes else 0)
            total += done
            if nodes and on_batch is not None:
                on_batch(done)
            if nodes < batch_size:
                break
    except psycopg.Error as exc:
        raise StorageError(
            f"pruning expired runs in PostgreSQL {where} failed after {total.runs} run(s) in "
            f"{total.batches} batch(es): {exc}; the batch under way was rolled back whole, and "
            "the next prune goes on from there"
        ) from exc
    finally:
        conn.close()
    return total
