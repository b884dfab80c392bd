"""The PostgreSQL event store: the log in a table, for users who already operate PostgreSQL.

Everything lives in one PostgreSQL schema (``actorflow`` unless told otherwise)::

    schema_version(version integer primary key, description text, applied_at timestamptz)
    events(position bigserial primary key, event_id text unique not null, run_id text not null,
           type text not null, correlation_id text, record bytea not null,
           created_at timestamptz not null default now())
    index events_run_position on events(run_id, position)

``record`` holds the runtime's record bytes unchanged, and is the only thing read back: the other
columns are copied out of it at append so that SQL can find a run's events or every event of a
type without decoding records. A record must therefore be an event (the orjson array
``[event_id, run_id, type, correlation_id, created_at, data]`` that ``Payloads.encode`` makes);
``created_at`` is when the row was inserted, the event's own time stays in the record.

Durability maps onto transactions: ``append`` inserts its batch in the open transaction (one
statement for a small batch, ``COPY`` for a large one, whichever measured faster), ``sync``
commits it. With ``durability="fsync"`` a commit returns once PostgreSQL has flushed its WAL
(``synchronous_commit`` as the server sets it, ``on`` by default); with ``durability="none"``
the session sets ``synchronous_commit = off``, so a commit may return before the flush and a
server crash can lose the last few hundred milliseconds of commits (tests and benchmarks only).
A failed insert or commit fails the store for good, as a failed fsync fails the file log: the
outcome of a commit whose answer was lost is unknown, so it is never retried as if it were safe,
and the next start reads what was committed.

The schema is created and upgraded by the steps in ``_MIGRATIONS``, applied in one transaction
under an advisory lock, so processes starting together never race; ``migrate()`` applies them
ahead of time and ``scan()`` applies them at open unless ``migrate=False``. A database whose
schema is newer than this code is refused with :class:`~actorflow.errors.LogFormatError`.

One runtime at a time: ``scan()`` takes a session advisory lock on the schema and holds it until
``close()``, the counterpart of the file log's ``LOCK`` file, because the runtime keeps its run
and token index in memory and a second runtime on the same tables would not see the first one's
hooks. Several runtimes on one database need more, which later schema versions add on top of
``events`` (its ``run_id``, ``type`` and ``correlation_id`` columns are there for them):

- per-run leases that an owner renews, checked by each append in its own transaction, so a
  stale owner whose lease was taken cannot append;
- run status, live hook tokens (unique by a constraint, so two processes cannot both win a
  token) and timers as tables, written in the same transaction as the event that changes them;
- positions that become visible in commit order: ``bigserial`` values are drawn before commit,
  so concurrent writers can commit out of position order, and a reader following the log by
  position must not skip the late one (appends serialized per schema, or reads held below the
  oldest open writer);
- ``LISTEN/NOTIFY`` to wake the process owning a run, with polling so a lost notification
  delays a delivery but never drops it;
- timers claimed with ``FOR UPDATE SKIP LOCKED``, so each fires once among many processes.

The driver is psycopg 3's blocking API. The runtime calls every store method in a worker thread,
so the store works the same under asyncio and trio.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from actorflow.errors import LogFormatError, LogWriteError, StorageError
from actorflow.runtime.log.store import Durability, Position, ScanReport

__all__ = ["SCHEMA_VERSION", "PostgresLog", "migrate"]


@dataclass(frozen=True, slots=True)
class _Migration:
    """One schema step: SQL statements with ``{schema}`` standing for the quoted schema name."""

    version: int
    description: str
    statements: tuple[str, ...]


_MIGRATIONS: tuple[_Migration, ...] = (
    _Migration(
        1,
        "the events table",
        (
            """CREATE TABLE {schema}.events (
                position bigserial PRIMARY KEY,
                event_id text NOT NULL UNIQUE,
                run_id text NOT NULL,
                type text NOT NULL,
                correlation_id text,
                record bytea NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            )""",
            "CREATE INDEX events_run_position ON {schema}.events (run_id, position)",
        ),
    ),
    _Migration(
        2,
        "many runtimes on one schema: nodes, run owners, live hooks, timers, inbox",
        (
            # A runtime process: it owns runs while its lease lasts. A node whose lease ran
            # out is fenced by whoever takes its runs, and must not come back as if alive.
            """CREATE TABLE {schema}.nodes (
                node_id text PRIMARY KEY,
                lease_until timestamptz NOT NULL,
                fenced boolean NOT NULL DEFAULT false,
                started_at timestamptz NOT NULL DEFAULT now()
            )""",
            # One row per run; owner is the node whose runtime holds the run's actor.
            """CREATE TABLE {schema}.runs (
                run_id text PRIMARY KEY,
                workflow text NOT NULL,
                status text NOT NULL,
                owner text,
                start_key text UNIQUE,
                created_at timestamptz NOT NULL DEFAULT now()
            )""",
            "CREATE INDEX runs_owner ON {schema}.runs (owner) "
            "WHERE status IN ('pending', 'running')",
            # Live hooks. The primary key is what makes a token unique across processes.
            # event_id is the hook_created event; NULL while a chosen token is only claimed.
            """CREATE TABLE {schema}.hooks (
                token text PRIMARY KEY,
                run_id text NOT NULL,
                hook_id text NOT NULL,
                event_id text
            )""",
            "CREATE INDEX hooks_run ON {schema}.hooks (run_id)",
            """CREATE TABLE {schema}.timers (
                wait_id text PRIMARY KEY,
                run_id text NOT NULL,
                due_at double precision NOT NULL
            )""",
            "CREATE INDEX timers_run ON {schema}.timers (run_id)",
            "CREATE INDEX timers_due ON {schema}.timers (due_at)",
            # Deliveries accepted by a process that does not own the run: durable (the sender
            # has its answer), waiting for the owner to append them to the run's history.
            """CREATE TABLE {schema}.inbox (
                id bigserial PRIMARY KEY,
                run_id text NOT NULL,
                token text NOT NULL,
                event_id text NOT NULL UNIQUE,
                record bytea NOT NULL,
                taken_by text,
                created_at timestamptz NOT NULL DEFAULT now()
            )""",
            "CREATE INDEX inbox_run ON {schema}.inbox (run_id, id)",
            # Idempotency keys of deliveries, so a retry sent to any process is recognised.
            """CREATE TABLE {schema}.delivery_keys (
                token text NOT NULL,
                key text NOT NULL,
                hook_id text NOT NULL,
                digest text NOT NULL,
                event_id text NOT NULL,
                PRIMARY KEY (token, key)
            )""",
            # A log written by version 1 (one runtime) gets its runs, live hooks and timers
            # indexed, so the runtimes that share it from now on find them.
            """INSERT INTO {schema}.runs (run_id, workflow, status, start_key)
            SELECT DISTINCT ON (c.run_id) c.run_id,
                coalesce(convert_from(c.record, 'UTF8')::json -> 5 ->> 'workflow', ''),
                coalesce((
                    SELECT CASE s.type WHEN 'run_started' THEN 'running'
                        WHEN 'run_completed' THEN 'completed' WHEN 'run_failed' THEN 'failed'
                        ELSE 'cancelled' END
                    FROM {schema}.events s
                    WHERE s.run_id = c.run_id AND s.type IN
                        ('run_started', 'run_completed', 'run_failed', 'run_cancelled')
                    ORDER BY (s.type = 'run_started'), s.position LIMIT 1
                ), 'pending'),
                convert_from(c.record, 'UTF8')::json -> 5 ->> 'idempotency_key'
            FROM {schema}.events c WHERE c.type = 'run_created'
            ORDER BY c.run_id, c.position
            ON CONFLICT DO NOTHING""",
            """INSERT INTO {schema}.hooks (token, run_id, hook_id, event_id)
            SELECT convert_from(h.record, 'UTF8')::json -> 5 ->> 'token', h.run_id,
                h.correlation_id, h.event_id
            FROM {schema}.events h JOIN {schema}.runs r ON r.run_id = h.run_id
            WHERE h.type = 'hook_created' AND r.status IN ('pending', 'running')
                AND NOT EXISTS (SELECT 1 FROM {schema}.events d WHERE d.run_id = h.run_id
                    AND d.type = 'hook_disposed' AND d.correlation_id = h.correlation_id)
            ORDER BY h.position DESC
            ON CONFLICT DO NOTHING""",
            """INSERT INTO {schema}.timers (wait_id, run_id, due_at)
            SELECT w.correlation_id, w.run_id,
                (convert_from(w.record, 'UTF8')::json -> 5 ->> 'resume_at')::double precision
            FROM {schema}.events w JOIN {schema}.runs r ON r.run_id = w.run_id
            WHERE w.type = 'wait_created' AND r.status IN ('pending', 'running')
                AND NOT EXISTS (SELECT 1 FROM {schema}.events d WHERE d.run_id = w.run_id
                    AND d.type IN ('wait_completed', 'wait_cancelled')
                    AND d.correlation_id = w.correlation_id)
            ON CONFLICT DO NOTHING""",
        ),
    ),
    _Migration(
        3,
        "listing runs: creation, start and end times, version, and indexes to page by",
        (
            # Event times (seconds since the epoch, as in the records), not insertion times.
            "ALTER TABLE {schema}.runs ADD COLUMN created double precision, "
            "ADD COLUMN started double precision, ADD COLUMN ended double precision, "
            "ADD COLUMN version text",
            """UPDATE {schema}.runs r SET
                created = (convert_from(e.record, 'UTF8')::json ->> 4)::double precision,
                version = convert_from(e.record, 'UTF8')::json -> 5 ->> 'version'
            FROM {schema}.events e WHERE e.run_id = r.run_id AND e.type = 'run_created'""",
            """UPDATE {schema}.runs r SET
                started = (convert_from(e.record, 'UTF8')::json ->> 4)::double precision
            FROM {schema}.events e WHERE e.run_id = r.run_id AND e.type = 'run_started'""",
            """UPDATE {schema}.runs r SET
                ended = (convert_from(e.record, 'UTF8')::json ->> 4)::double precision
            FROM {schema}.events e WHERE e.run_id = r.run_id
                AND e.type IN ('run_completed', 'run_failed', 'run_cancelled')""",
            # Run ids sort by creation time: newest first is a backward scan of an index.
            "CREATE INDEX runs_status_listing ON {schema}.runs (status, run_id)",
            "CREATE INDEX runs_workflow_listing ON {schema}.runs (workflow, run_id)",
        ),
    ),
    _Migration(
        4,
        "retention: when each run ended, and indexes to prune ended runs in batches",
        (
            # In the runtime's clock (unix seconds), like timers.due_at: the time of the run's
            # terminal event, which is what retention counts from. NULL while the run is live.
            "ALTER TABLE {schema}.runs ADD COLUMN ended_at double precision",
            """UPDATE {schema}.runs r SET ended_at = t.ended_at FROM (
                SELECT DISTINCT ON (e.run_id) e.run_id,
                    (convert_from(e.record, 'UTF8')::json ->> 4)::double precision AS ended_at
                FROM {schema}.events e
                WHERE e.type IN ('run_completed', 'run_failed', 'run_cancelled')
                ORDER BY e.run_id, e.position
            ) t
            WHERE r.run_id = t.run_id AND r.status IN ('completed', 'failed', 'cancelled')""",
            # An ended run without a terminal event cannot be written by actorflow; if one is
            # there anyway, its retention counts from the upgrade rather than never.
            "UPDATE {schema}.runs SET ended_at = extract(epoch FROM now()) "
            "WHERE status IN ('completed', 'failed', 'cancelled') AND ended_at IS NULL",
            "CREATE INDEX runs_ended ON {schema}.runs (ended_at) WHERE ended_at IS NOT NULL",
            # Runs that a node still running the previous version ends during a rolling
            # upgrade get no ended_at: a prune finds them here (normally empty) and dates them.
            "CREATE INDEX runs_undated ON {schema}.runs (run_id) WHERE ended_at IS NULL "
            "AND status IN ('completed', 'failed', 'cancelled')",
            # A prune frees the idempotency keys of a run's deliveries by their event ids.
            "CREATE INDEX delivery_keys_event ON {schema}.delivery_keys (event_id)",
        ),
    ),
    _Migration(
        5,
        "routing between nodes: each node's peer address, the link secret, forwarded deliveries",
        (
            # host:port of the node's peer listener (NULL: it takes deliveries by the inbox only).
            "ALTER TABLE {schema}.nodes ADD COLUMN peer text",
            # A delivery first forwarded to the owner, then committed here when the link failed:
            # the owner may have appended it already (same event id), so it checks before.
            "ALTER TABLE {schema}.inbox ADD COLUMN forwarded boolean NOT NULL DEFAULT false",
            # One row: the key the nodes of this schema authenticate their links with. Whoever
            # can read it can already write the inbox, so the link trusts no more than that.
            """CREATE TABLE {schema}.peer_secret (
                one boolean PRIMARY KEY DEFAULT true CHECK (one),
                secret bytea NOT NULL
            )""",
        ),
    ),
)

#: The schema version this code creates, reads and writes.
SCHEMA_VERSION = _MIGRATIONS[-1].version

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# Below this many records one INSERT ... unnest statement is faster (one round trip); from about
# here on, binary COPY is, even with the extra round trip that draws the positions first
# (measured on PostgreSQL 15: 1.6x at 200 records, 2x at 1,000 and more).
_COPY_FROM = 32
# Records a server-side cursor fetches per round trip during scan().
_SCAN_BATCH = 2000
_CONNECT_TIMEOUT = 10


class PostgresLog:
    """An :class:`~actorflow.runtime.log.store.EventStore` in a PostgreSQL database.

    ``dsn`` is a libpq connection string or ``postgresql://`` URL. ``schema`` names the
    PostgreSQL schema holding the tables, so one database can hold several independent logs.
    ``migrate=False`` refuses to open a database whose schema is missing or behind, for
    deployments that run ``migrate()`` as a separate step. The constructor does not connect:
    ``scan()`` does.

    Raises:
        ValueError: ``durability``, ``schema`` or ``dsn`` is malformed.
    """

    def __init__(
        self,
        dsn: str,
        *,
        durability: Durability = "fsync",
        schema: str = "actorflow",
        migrate: bool = True,
    ) -> None:
        if durability not in ("fsync", "none"):
            raise ValueError(f"durability must be 'fsync' or 'none', not {durability!r}")
        self.dsn = dsn
        self.durability: Durability = durability
        self.schema = schema
        self._apply_migrations = migrate
        self._where = _describe(dsn, schema)
        self._queries = _Queries(schema)
        self._conn: psycopg.Connection[Any] | None = None  # scan, append, sync
        self._reader: psycopg.Connection[Any] | None = None  # read, in autocommit
        self._read_lock = threading.Lock()
        # Records appended in the open transaction, which the reader's connection cannot see
        # yet. Cleared only after the commit returned, so a position missing from it has
        # either been committed or never been appended.
        self._pending: dict[Position, bytes] = {}
        self._pending_lock = threading.Lock()
        self._dirty = False
        self._scan_started = False
        self._report: ScanReport | None = None
        self._failure: psycopg.Error | None = None
        self._closed = False

    # -- opening ---------------------------------------------------------------------------

    def scan(self) -> Iterator[tuple[Position, bytes]]:
        """Connect, migrate (unless told not to), lock the schema, and yield every record.

        Runs once per ``PostgresLog``. There is no torn tail to truncate: a transaction that
        did not commit left nothing behind.

        Raises:
            LogFormatError: the schema is newer than this code, behind it with
                ``migrate=False``, or holds tables actorflow did not create.
            StorageError: the database cannot be reached or read, or another runtime has the
                schema open.
        """
        if self._closed:
            raise RuntimeError("this PostgresLog is closed")
        if self._scan_started:
            raise RuntimeError("scan() runs once per PostgresLog; open a new one to scan again")
        self._scan_started = True
        return self._scan_or_release()

    @property
    def last_scan(self) -> ScanReport | None:
        """The report of the finished ``scan()``, or ``None`` before it finished."""
        return self._report

    def _scan_or_release(self) -> Generator[tuple[Position, bytes], None, None]:
        # A scan that raises or is abandoned leaves a store nobody can append to: give the
        # connection (and with it the schema lock) back at once rather than at close().
        try:
            yield from self._scan()
        except BaseException:
            self._release()
            raise

    def _open_writer(self) -> psycopg.Connection[Any]:
        """Connect the writing connection, set its durability, bring the schema up to date.

        Raises:
            StorageError: the database cannot be reached.
            LogFormatError: see ``scan``.
            psycopg.Error: the database failed (the caller translates it).
        """
        conn = self._conn = _connect(self.dsn, self._where)
        if self.durability == "none":
            conn.execute("SET synchronous_commit = off")
            conn.commit()
        _ensure_schema(conn, self.schema, apply=self._apply_migrations, where=self._where)
        return conn

    def _insert_records(
        self, conn: psycopg.Connection[Any], columns: _Columns, records: Sequence[bytes]
    ) -> list[Position]:
        """Insert the batch by the faster path for its size (see ``_COPY_FROM``)."""
        if len(records) < _COPY_FROM:
            return self._insert(conn, columns, records)
        return self._copy(conn, columns, records)

    def _scan(self) -> Generator[tuple[Position, bytes], None, None]:
        try:
            conn = self._open_writer()
            locked = conn.execute(self._queries.try_lock, (_lock_key("open", self.schema),))
            row = locked.fetchone()
            conn.commit()
            if row is None or not row[0]:
                raise StorageError(
                    f"the PostgreSQL event log {self._where} is already open in another "
                    "actorflow runtime; one runtime at a time uses a schema: stop the other "
                    "one, or give this one its own schema"
                )
            count = 0
            with conn.cursor("actorflow_scan", binary=True) as cursor:
                cursor.itersize = _SCAN_BATCH
                cursor.execute(self._queries.scan)
                for position, record in cursor:
                    count += 1
                    yield position, record
            conn.commit()
        except psycopg.Error as exc:
            message = f"cannot read the PostgreSQL event log {self._where}: {exc}"
            raise StorageError(message) from exc
        self._report = ScanReport(records=count)

    # -- writing ---------------------------------------------------------------------------

    def append(self, records: Sequence[bytes]) -> list[Position]:
        """Insert records after the last one in the open transaction, without committing.

        Raises:
            LogWriteError: the insert failed, now or earlier; the store accepts nothing more.
            ValueError: a record is not an actorflow event (nothing was written).
        """
        conn = self._check_writable()
        if not records:
            return []
        columns = _index_columns(records)
        try:
            positions = self._insert_records(conn, columns, records)
        except psycopg.Error as exc:
            raise self._fail("append", exc) from exc
        with self._pending_lock:
            self._pending.update(zip(positions, records, strict=True))
        self._dirty = True
        return positions

    def _insert(
        self, conn: psycopg.Connection[Any], columns: _Columns, records: Sequence[bytes]
    ) -> list[Position]:
        rows = conn.execute(
            self._queries.insert,
            (columns.event_ids, columns.run_ids, columns.types, columns.correlation_ids, records),
        ).fetchall()
        # RETURNING promises no order; event ids are unique, so they say which row is which.
        by_event = {event_id: position for position, event_id in rows}
        return [by_event[event_id] for event_id in columns.event_ids]

    def _copy(
        self, conn: psycopg.Connection[Any], columns: _Columns, records: Sequence[bytes]
    ) -> list[Position]:
        with conn.cursor(binary=True) as cursor:
            cursor.execute(self._queries.allocate, (len(records),))
            positions = sorted(position for (position,) in cursor.fetchall())
            with cursor.copy(self._queries.copy) as copy:
                copy.set_types(["int8", "text", "text", "text", "text", "bytea"])
                for row in zip(
                    positions,
                    columns.event_ids,
                    columns.run_ids,
                    columns.types,
                    columns.correlation_ids,
                    records,
                    strict=True,
                ):
                    copy.write_row(row)
        return positions

    def sync(self) -> None:
        """Commit the open transaction; see the module docstring for what ``durability`` means.

        Raises:
            LogWriteError: the commit failed, now or earlier. The store is then failed for
                good: a commit whose outcome is unknown is never retried as if it were safe.
        """
        self._check_failure()
        if not self._dirty or self._conn is None:
            return
        try:
            self._conn.commit()
        except psycopg.Error as exc:
            raise self._fail("commit", exc) from exc
        self._dirty = False
        with self._pending_lock:
            self._pending.clear()

    def _fail(self, what: str, exc: psycopg.Error) -> LogWriteError:
        self._failure = exc
        with self._pending_lock:
            self._pending.clear()
        return LogWriteError(
            f"event log {what} failed in PostgreSQL {self._where}: {exc}; the log accepts "
            "nothing more (records not yet committed may be lost): fix the database and "
            "restart the runtime"
        )

    def _check_failure(self) -> None:
        if self._failure is not None:
            raise LogWriteError(
                f"the PostgreSQL event log {self._where} failed earlier ({self._failure}) and "
                "accepts nothing more: fix the database and restart the runtime"
            ) from self._failure

    def _check_writable(self) -> psycopg.Connection[Any]:
        self._check_failure()
        if self._closed:
            raise RuntimeError("this PostgresLog is closed")
        if self._report is None or self._conn is None:
            raise RuntimeError("exhaust scan() before the first append()")
        return self._conn

    # -- reading records -------------------------------------------------------------------

    def read(self, positions: Sequence[Position]) -> list[bytes]:
        """Return the records at these positions (committed ones, and this store's uncommitted).

        Safe to call from another thread while ``append`` or ``sync`` runs: reads go through a
        connection of their own.

        Raises:
            StorageError: the database cannot be read.
            ValueError: no record was appended at a position.
        """
        if self._closed:
            raise RuntimeError("this PostgresLog is closed")
        if not positions:
            return []
        found: dict[Position, bytes] = {}
        if self._pending:
            with self._pending_lock:
                pending = self._pending
                found = {p: pending[p] for p in positions if p in pending}
        wanted = list({p for p in positions if p not in found})
        if wanted:
            found.update(self._select(wanted))
        out: list[bytes] = []
        for position in positions:
            record = found.get(position)
            if record is None:
                raise ValueError(f"no record at position {position} in {self._where}")
            out.append(record)
        return out

    def _select(self, positions: list[Position]) -> dict[Position, bytes]:
        with self._read_lock:
            try:
                return self._select_once(positions)
            except psycopg.Error as exc:
                if self._reader is None or not self._reader.broken:
                    raise self._read_error(exc) from exc
            # The connection was lost (a server restart, a network cut). A read changes nothing,
            # so unlike a commit it may be repeated: once, on a new connection.
            try:
                return self._select_once(positions)
            except psycopg.Error as exc:
                raise self._read_error(exc) from exc

    def _select_once(self, positions: list[Position]) -> dict[Position, bytes]:
        reader = self._reader
        if reader is None or reader.closed or reader.broken:
            if reader is not None:
                reader.close()
            reader = self._reader = _connect(self.dsn, self._where, autocommit=True)
        with reader.cursor(binary=True) as cursor:
            cursor.execute(self._queries.select, (positions,))
            return dict(cursor.fetchall())

    def _read_error(self, exc: psycopg.Error) -> StorageError:
        return StorageError(
            f"cannot read records from the PostgreSQL event log {self._where}: {exc}"
        )

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Commit appended records (unless the store failed) and close the connections.

        Closing releases the schema lock, so another runtime can open the log.

        Raises:
            LogWriteError: the final commit failed.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._failure is None:
                self.sync()
        finally:
            self._release()

    def _release(self) -> None:
        # Closing a connection rolls back whatever it had not committed and frees its locks.
        conn, self._conn = self._conn, None
        if conn is not None:
            if not conn.closed and not conn.broken:
                # Unlock before closing: a backend frees its locks only as it exits, after
                # close() has returned, so a reopen right away could still find the schema held.
                try:
                    conn.rollback()
                    conn.execute("SELECT pg_advisory_unlock_all()")
                except psycopg.Error:
                    pass
            conn.close()
        with self._read_lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()


def migrate(dsn: str, *, schema: str = "actorflow") -> int:
    """Create or upgrade actorflow's tables in ``schema``; return the schema version now there.

    Safe to run from several processes at once (they queue on an advisory lock), and a no-op on
    a schema that is already current.

    Raises:
        LogFormatError: the schema is newer than this code, or holds tables actorflow did not
            create.
        StorageError: the database cannot be reached, or a migration step failed (nothing of
            that run was applied).
        ValueError: ``schema`` or ``dsn`` is malformed.
    """
    where = _describe(dsn, schema)
    _Queries(schema)  # validates the name
    conn = _connect(dsn, where)
    try:
        return _ensure_schema(conn, schema, apply=True, where=where)
    except psycopg.Error as exc:
        raise StorageError(f"cannot migrate the PostgreSQL event log {where}: {exc}") from exc
    finally:
        conn.close()


# -- internals --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Columns:
    """The columns ``append`` copies out of each record."""

    event_ids: list[str]
    run_ids: list[str]
    types: list[str]
    correlation_ids: list[str | None]


def _index_columns(records: Sequence[bytes]) -> _Columns:
    """Parse each record's ids and type.

    Raises:
        ValueError: a record is not an actorflow event array.
    """
    columns = _Columns([], [], [], [])
    loads = orjson.loads
    for index, record in enumerate(records):
        try:
            fields = loads(record)
        except orjson.JSONDecodeError:
            fields = None
        if (
            type(fields) is not list
            or len(fields) != 6
            or not all(_is_text(value) for value in fields[:3])
            or not (fields[3] is None or _is_text(fields[3]))
        ):
            raise ValueError(
                f"record {index} of the batch is not an actorflow event "
                "([event_id, run_id, type, correlation_id, created_at, data] with text ids): "
                "the PostgreSQL log indexes events by their ids; nothing was written"
            )
        columns.event_ids.append(fields[0])
        columns.run_ids.append(fields[1])
        columns.types.append(fields[2])
        columns.correlation_ids.append(fields[3])
    return columns


def _is_text(value: object) -> bool:
    # PostgreSQL text cannot hold NUL; refusing here keeps that from failing the whole store.
    return type(value) is str and "\x00" not in value


class _Queries:
    """The store's SQL, rendered once for its schema."""

    __slots__ = ("allocate", "copy", "insert", "scan", "select", "try_lock")

    def __init__(self, schema: str) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(
                f"schema must be a plain identifier (letters, digits, _; at most 63), not "
                f"{schema!r}"
            )
        events = sql.Identifier(schema, "events")
        sequence = sql.Literal(f'"{schema}".events_position_seq')

        def render(template: str, *args: sql.Composable) -> bytes:
            return sql.SQL(template).format(*args).as_bytes(None)

        self.try_lock = b"SELECT pg_try_advisory_lock(%s)"
        self.scan = render("SELECT position, record FROM {} ORDER BY position", events)
        self.insert = render(
            "INSERT INTO {} (event_id, run_id, type, correlation_id, record) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[]) "
            "RETURNING position, event_id",
            events,
        )
        self.allocate = render("SELECT nextval({}) FROM generate_series(1, %s)", sequence)
        self.copy = render(
            "COPY {} (position, event_id, run_id, type, correlation_id, record) "
            "FROM STDIN (FORMAT BINARY)",
            events,
        )
        self.select = render(
            "SELECT position, record FROM {} WHERE position = ANY(%s::bigint[])", events
        )


def _ensure_schema(conn: psycopg.Connection[Any], schema: str, *, apply: bool, where: str) -> int:
    """Bring ``schema`` to ``SCHEMA_VERSION`` (if ``apply``) in one locked transaction.

    Raises:
        LogFormatError: the schema is newer, behind with ``apply=False``, or not actorflow's.
        psycopg.Error: the database failed (the caller translates it).
    """
    quoted = sql.Identifier(schema)
    versions = sql.Identifier(schema, "schema_version")
    with conn.transaction():
        # Taken before looking, so a second process waits here and then sees the result.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("migrate", schema),))
        current = _current_version(conn, schema)
        if current > SCHEMA_VERSION:
            raise LogFormatError(
                f"the PostgreSQL event log {where} has schema version {current}, but this "
                f"actorflow knows versions up to {SCHEMA_VERSION}; upgrade actorflow (a newer "
                "release migrated this database)"
            )
        if current == SCHEMA_VERSION:
            return current
        if not apply:
            raise LogFormatError(
                f"the PostgreSQL event log {where} has schema version {current}, and this "
                f"actorflow needs {SCHEMA_VERSION}; run migrate() (actorflow.runtime.log."
                "postgres.migrate), or open the store with migrate=True"
            )
        if current == 0:
            found = conn.execute(
                "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = %s", (schema,)
            ).fetchone()
            if found is not None and found[0]:
                raise LogFormatError(
                    f"the PostgreSQL schema {schema!r} in {where} holds tables but no actorflow "
                    "schema_version: it is not an actorflow log; choose another schema"
                )
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(quoted))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (version integer PRIMARY KEY, description text NOT NULL, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(versions)
            )
        for step in _MIGRATIONS[current:]:
            for statement in step.statements:
                conn.execute(sql.SQL(statement).format(schema=quoted))
            conn.execute(
                sql.SQL("INSERT INTO {} (version, description) VALUES (%s, %s)").format(versions),
                (step.version, step.description),
            )
    return SCHEMA_VERSION


def _current_version(conn: psycopg.Connection[Any], schema: str) -> int:
    table = sql.Identifier(schema, "schema_version").as_string(conn)
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    if exists is None or not exists[0]:
        return 0
    row = conn.execute(
        sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(
            sql.Identifier(schema, "schema_version")
        )
    ).fetchone()
    return int(row[0]) if row is not None else 0


def _connect(dsn: str, where: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """Open a connection, with a connect timeout and an application name unless the DSN has them.

    Raises:
        StorageError: the database cannot be reached.
    """
    options: dict[str, Any] = {}
    given = conninfo_to_dict(dsn)
    if "connect_timeout" not in given:
        options["connect_timeout"] = _CONNECT_TIMEOUT
    if "application_name" not in given:
        options["application_name"] = "actorflow"
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **options)
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to PostgreSQL {where}: {exc}") from exc


def _describe(dsn: str, schema: str) -> str:
    """Where the log is, for messages: host, port, database and schema, never the password.

    Raises:
        ValueError: ``dsn`` is not a valid connection string.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"not a PostgreSQL connection string: {exc}") from exc
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    database = params.get("dbname") or params.get("user") or "?"
    return f"{host}:{port}/{database} (schema {schema})"


def _lock_key(purpose: str, schema: str) -> int:
    """A stable 64-bit advisory lock key for ``purpose`` on ``schema``."""
    digest = hashlib.blake2b(f"actorflow:{purpose}:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
