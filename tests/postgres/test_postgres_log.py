"""The PostgreSQL store on a real server: the conformance suite, its own contract, a runtime on it.

Faults are real: a lost connection is made by terminating the store's backend from another
session (what a server restart or a network cut does), never by a mock.

The conformance suite appends opaque bytes, but ``PostgresLog`` stores events (it copies their
ids into indexed columns); the suite's payloads therefore travel inside event records through
:class:`EventFramed`, which adds nothing else: positions, order, batching, reopening and reads
are the store's own.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.postgres.conftest import Database, require_psycopg

require_psycopg()

from psycopg import sql  # noqa: E402
from tests.conformance.event_log import EVENT_LOG_CHECKS, Opener, open_scanned  # noqa: E402
from tests.conftest import resume_when_ready  # noqa: E402

import actorflow as af  # noqa: E402
from actorflow.errors import LogFormatError, LogWriteError, StorageError  # noqa: E402
from actorflow.runtime.log import postgres  # noqa: E402
from actorflow.runtime.log.postgres import SCHEMA_VERSION, PostgresLog, migrate  # noqa: E402
from actorflow.runtime.log.store import Durability, Position, ScanReport  # noqa: E402


def event(run: str = "wrun_1", kind: str = "hook_received", corr: str | None = "hook_1") -> bytes:
    """A record as the runtime writes it, with a fresh event id."""
    return orjson.dumps([f"evnt_{uuid.uuid4().hex}", run, kind, corr, 1.5, {"payload": {"k": 1}}])


def rows(db: Database, schema: str) -> list[tuple[Any, ...]]:
    """Every row of the events table, in position order."""
    return db.query(
        sql.SQL(
            "SELECT position, event_id, run_id, type, correlation_id, record FROM {} "
            "ORDER BY position"
        ).format(sql.Identifier(schema, "events"))
    )


# -- the conformance suite ---------------------------------------------------------------------


class EventFramed:
    """An ``EventStore`` of opaque bytes on top of ``PostgresLog``: each payload rides in an event."""

    def __init__(self, inner: PostgresLog) -> None:
        self.inner = inner
        self.durability: Durability = inner.durability

    def scan(self) -> Iterator[tuple[Position, bytes]]:
        for position, record in self.inner.scan():
            yield position, _unwrap(record)

    @property
    def last_scan(self) -> ScanReport | None:
        return self.inner.last_scan

    def append(self, records: Sequence[bytes]) -> list[Position]:
        return self.inner.append([_wrap(record) for record in records])

    def sync(self) -> None:
        self.inner.sync()

    def read(self, positions: Sequence[Position]) -> list[bytes]:
        return [_unwrap(record) for record in self.inner.read(positions)]

    def close(self) -> None:
        self.inner.close()


def _wrap(payload: bytes) -> bytes:
    return orjson.dumps(
        [f"evnt_{uuid.uuid4().hex}", "wrun_conformance", "opaque", None, 0, {"hex": payload.hex()}]
    )


def _unwrap(record: bytes) -> bytes:
    return bytes.fromhex(orjson.loads(record)[5]["hex"])


@pytest.mark.parametrize("check", EVENT_LOG_CHECKS, ids=lambda check: check.__name__[6:])
@pytest.mark.parametrize("durability", ["fsync", "none"])
def test_conformance(
    check: Callable[[Opener], None], durability: Durability, pg_database: Database, pg_schema: str
) -> None:
    check(
        lambda: EventFramed(PostgresLog(pg_database.dsn, durability=durability, schema=pg_schema))
    )


# -- what the store adds: indexed columns, refusals --------------------------------------------


@pytest.mark.parametrize("size", [1, 5, 31, 32, 500], ids=lambda n: f"batch{n}")
def test_columns_are_copied_from_each_record(
    size: int, pg_database: Database, pg_schema: str
) -> None:
    """Both insert paths (one statement below 32 records, COPY from 32) fill the same columns."""
    records = [
        event(run=f"wrun_{i % 3}", kind=f"type_{i % 2}", corr=None if i % 4 == 0 else f"c{i}")
        for i in range(size)
    ]
    log, _ = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    positions = log.append(records)
    assert positions == sorted(positions) and len(set(positions)) == size
    log.sync()
    log.close()
    expected = []
    for position, record in zip(positions, records, strict=True):
        event_id, run_id, kind, corr, _, _ = orjson.loads(record)
        expected.append((position, event_id, run_id, kind, corr, record))
    assert rows(pg_database, pg_schema) == expected


def test_records_come_back_byte_for_byte(pg_database: Database, pg_schema: str) -> None:
    """The record column is the record: spacing, key order and escapes are kept, not re-encoded."""
    odd = [
        b'["evnt_a", "wrun_1", "t", null, 1, {"b": 1, "a": "\\u00e9\xc3\xa9"}]',
        b'  ["evnt_b","wrun_1","t","c",1,{}]\n',
    ]
    log, _ = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    positions = log.append(odd)
    log.sync()
    assert log.read(positions) == odd
    log.close()
    log, scanned = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    log.close()
    assert scanned == list(zip(positions, odd, strict=True))


@pytest.mark.parametrize(
    "bad",
    [
        b"not json",
        b"[1, 2, 3]",
        b'{"event_id": "evnt_x"}',
        orjson.dumps([7, "wrun_1", "t", None, 0, {}]),
        orjson.dumps(["evnt_x", "wrun_1", "t", 5, 0, {}]),
        orjson.dumps(["evnt_x", "wrun\x00", "t", None, 0, {}]),
    ],
    ids=["not-json", "short", "object", "int-id", "int-correlation", "nul"],
)
def test_a_record_that_is_not_an_event_is_refused_whole(
    bad: bytes, pg_database: Database, pg_schema: str
) -> None:
    log, _ = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    with pytest.raises(ValueError, match="record 1 of the batch is not an actorflow event"):
        log.append([event(), bad, event()])
    good = event()
    positions = log.append([good])  # the store is not failed: nothing was written
    log.sync()
    log.close()
    assert [(row[0], row[5]) for row in rows(pg_database, pg_schema)] == [(positions[0], good)]


def test_a_duplicate_event_id_fails_the_store(pg_database: Database, pg_schema: str) -> None:
    record = event()
    log, _ = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    log.append([record])
    log.sync()
    with pytest.raises(LogWriteError, match="append failed"):
        log.append([record])
    with pytest.raises(LogWriteError, match="failed earlier"):
        log.append([event()])
    log.close()
    assert len(rows(pg_database, pg_schema)) == 1


def test_constructor_checks_its_arguments_and_connects_to_nothing() -> None:
    with pytest.raises(ValueError, match="durability"):
        PostgresLog("postgresql://127.0.0.1/x", durability="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schema must be a plain identifier"):
        PostgresLog("postgresql://127.0.0.1/x", schema="a; DROP TABLE x")
    with pytest.raises(ValueError, match="not a PostgreSQL connection string"):
        PostgresLog("postgresql://[broken")
    PostgresLog("postgresql://nobody@127.0.0.1:1/nowhere").close()  # no connection was made


def test_an_unreachable_server_is_a_storage_error() -> None:
    log = PostgresLog("postgresql://nobody:secret@127.0.0.1:1/nowhere?connect_timeout=2")
    with pytest.raises(StorageError, match="cannot connect to PostgreSQL 127.0.0.1:1/nowhere") as e:
        list(log.scan())
    assert "secret" not in str(e.value)
    log.close()


# -- migrations --------------------------------------------------------------------------------


def versions(db: Database, schema: str) -> list[int]:
    table = sql.Identifier(schema, "schema_version")
    return [row[0] for row in db.query(sql.SQL("SELECT version FROM {} ORDER BY 1").format(table))]


def test_migrate_creates_the_schema_once(pg_database: Database, pg_schema: str) -> None:
    assert migrate(pg_database.dsn, schema=pg_schema) == SCHEMA_VERSION
    assert migrate(pg_database.dsn, schema=pg_schema) == SCHEMA_VERSION
    assert versions(pg_database, pg_schema) == list(range(1, SCHEMA_VERSION + 1))
    indexes = pg_database.query(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'events'",
        (pg_schema,),
    )
    assert any('(run_id, "position")' in row[0] for row in indexes), indexes
    # A store opened with migrate=False now finds it current.
    log, records = open_scanned(
        lambda: PostgresLog(pg_database.dsn, schema=pg_schema, migrate=False)
    )
    assert records == []
    log.close()


def test_processes_migrating_at_once_do_not_race(pg_database: Database, pg_schema: str) -> None:
    """Eight connections migrate one fresh schema together: one creates it, the rest wait."""
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def run() -> None:
        try:
            barrier.wait()
            results.append(migrate(pg_database.dsn, schema=pg_schema))
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [SCHEMA_VERSION] * 8
    assert versions(pg_database, pg_schema) == list(range(1, SCHEMA_VERSION + 1))


def _with_step(monkeypatch: pytest.MonkeyPatch, *statements: str) -> None:
    """Make the code know one more migration step (what a later release ships)."""
    step = postgres._Migration(SCHEMA_VERSION + 1, "a later step", statements)
    monkeypatch.setattr(postgres, "_MIGRATIONS", (*postgres._MIGRATIONS, step))
    monkeypatch.setattr(postgres, "SCHEMA_VERSION", SCHEMA_VERSION + 1)


def test_an_upgrade_applies_only_the_new_steps(
    pg_database: Database, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, _ = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    kept = log.append([event()])
    log.close()
    _with_step(monkeypatch, "CREATE TABLE {schema}.later (x int)")
    with pytest.raises(LogFormatError, match=f"needs {SCHEMA_VERSION + 1}; run migrate"):
        list(PostgresLog(pg_database.dsn, schema=pg_schema, migrate=False).scan())
    log, records = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    log.close()
    assert [position for position, _ in records] == kept
    assert versions(pg_database, pg_schema) == list(range(1, SCHEMA_VERSION + 2))
    assert pg_database.query("SELECT to_regclass(%s) IS NOT NULL", (f"{pg_schema}.later",)) == [
        (True,)
    ]


def test_a_failing_step_applies_nothing(
    pg_database: Database, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(pg_database.dsn, schema=pg_schema)
    _with_step(monkeypatch, "CREATE TABLE {schema}.later (x int)", "SELECT no_such_function()")
    with pytest.raises(StorageError, match="cannot migrate") as failed:
        migrate(pg_database.dsn, schema=pg_schema)
    assert failed.value.__cause__ is not None
    assert versions(pg_database, pg_schema) == list(range(1, SCHEMA_VERSION + 1))
    assert pg_database.query("SELECT to_regclass(%s) IS NOT NULL", (f"{pg_schema}.later",)) == [
        (False,)
    ]


def test_a_newer_schema_is_refused(pg_database: Database, pg_schema: str) -> None:
    migrate(pg_database.dsn, schema=pg_schema)
    pg_database.run(
        sql.SQL("INSERT INTO {} (version, description) VALUES (%s, 'from the future')").format(
            sql.Identifier(pg_schema, "schema_version")
        ),
        (SCHEMA_VERSION + 1,),
    )
    message = f"schema version {SCHEMA_VERSION + 1}, but this actorflow knows versions up to"
    with pytest.raises(LogFormatError, match=message):
        migrate(pg_database.dsn, schema=pg_schema)
    log = PostgresLog(pg_database.dsn, schema=pg_schema)
    with pytest.raises(LogFormatError, match=message):
        list(log.scan())
    log.close()


def test_a_missing_schema_is_refused_without_migrate(pg_database: Database, pg_schema: str) -> None:
    log = PostgresLog(pg_database.dsn, schema=pg_schema, migrate=False)
    with pytest.raises(LogFormatError, match="has schema version 0, and this actorflow needs"):
        list(log.scan())
    log.close()
    assert pg_database.query("SELECT 1 FROM pg_namespace WHERE nspname = %s", (pg_schema,)) == []


def test_a_schema_of_someone_else_is_refused(pg_database: Database, pg_schema: str) -> None:
    pg_database.run(
        sql.SQL("CREATE SCHEMA {0}; CREATE TABLE {0}.events (x int)").format(
            sql.Identifier(pg_schema)
        )
    )
    with pytest.raises(LogFormatError, match="holds tables but no actorflow schema_version"):
        migrate(pg_database.dsn, schema=pg_schema)


# -- one runtime at a time ---------------------------------------------------------------------


def test_a_second_open_of_the_schema_is_refused_until_the_first_closes(
    pg_database: Database, pg_schema: str
) -> None:
    first, _ = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    second = PostgresLog(pg_database.dsn, schema=pg_schema)
    with pytest.raises(StorageError, match="already open in another actorflow runtime"):
        list(second.scan())
    second.close()
    other_schema, _ = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema + "_b"))
    other_schema.close()  # another schema in the same database is another log
    first.close()
    third, _ = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    third.close()


def test_an_abandoned_scan_lets_the_schema_go(pg_database: Database, pg_schema: str) -> None:
    log, _ = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    log.append([event(), event()])
    log.close()
    log = PostgresLog(pg_database.dsn, schema=pg_schema)
    scan = log.scan()
    next(scan)
    scan.close()
    assert log.last_scan is None
    again, records = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    assert len(records) == 2
    again.close()
    log.close()


# -- faults: a lost connection -----------------------------------------------------------------


def test_a_failed_commit_fails_the_store_for_good(pg_database: Database, pg_schema: str) -> None:
    log, _ = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    kept = log.append([event()])
    log.sync()
    log.append([event(), event()])
    assert pg_database.terminate() == 1  # the writer's connection: no reader is open yet
    with pytest.raises(LogWriteError, match="commit failed") as failed:
        log.sync()
    assert failed.value.__cause__ is not None
    with pytest.raises(LogWriteError, match="failed earlier"):
        log.append([event()])
    with pytest.raises(LogWriteError, match="failed earlier"):
        log.sync()
    log.close()  # no final commit is attempted on a failed store
    log, records = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    log.close()
    assert [position for position, _ in records] == kept


def test_a_failed_append_fails_the_store(pg_database: Database, pg_schema: str) -> None:
    log, _ = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    pg_database.terminate()
    with pytest.raises(LogWriteError, match="append failed"):
        log.append([event()])
    with pytest.raises(LogWriteError, match="failed earlier"):
        log.sync()
    log.close()


def test_reads_reconnect_after_losing_their_connection(
    pg_database: Database, pg_schema: str
) -> None:
    log, _ = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    records = [event() for _ in range(3)]
    positions = log.append(records)
    log.sync()
    assert log.read(positions) == records
    assert pg_database.terminate() == 2  # the writer's and the reader's connections
    assert log.read(positions) == records  # repeated once, on a new connection
    with pytest.raises(ValueError, match="no record at position"):
        log.read([positions[-1] + 1000])
    with pytest.raises(LogWriteError, match="append failed"):
        log.append([event()])  # a write is never repeated: the store has failed
    log.close()


def test_a_read_that_fails_on_a_live_connection_is_a_storage_error(
    pg_database: Database, pg_schema: str
) -> None:
    log, _ = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    records = [event()]
    positions = log.append(records)
    log.sync()
    events = sql.Identifier(pg_schema, "events")
    pg_database.run(sql.SQL("ALTER TABLE {} RENAME TO moved").format(events))
    with pytest.raises(StorageError, match="cannot read records") as failed:
        log.read(positions)
    assert failed.value.__cause__ is not None
    pg_database.run(
        sql.SQL("ALTER TABLE {}.moved RENAME TO events").format(sql.Identifier(pg_schema))
    )
    assert log.read(positions) == records
    log.close()


# -- reading while appending -------------------------------------------------------------------


def test_reads_from_another_thread_while_appending(pg_database: Database, pg_schema: str) -> None:
    """The writer thread appends and commits; a reader thread reads what was committed so far."""
    log, _ = open_scanned(lambda: PostgresLog(pg_database.dsn, schema=pg_schema))
    committed: list[tuple[Position, bytes]] = []
    done = threading.Event()
    problems: list[BaseException] = []

    def reader() -> None:
        try:
            while True:
                finished = done.is_set()  # read once more after the writer's last commit
                seen = list(committed)
                if seen:
                    picked = seen[:: max(1, len(seen) // 7)]
                    got = log.read([position for position, _ in picked])
                    assert got == [record for _, record in picked]
                if finished:
                    return
        except BaseException as exc:
            problems.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for round_ in range(100):
            batch = [event(run=f"wrun_{round_}") for _ in range(4)]
            positions = log.append(batch)
            assert log.read(positions[:1]) == batch[:1]  # uncommitted, from this store
            log.sync()
            committed.extend(zip(positions, batch, strict=True))
    finally:
        done.set()
        thread.join()
    log.close()
    assert problems == []


def test_durability_none_commits_without_waiting_for_the_flush(
    pg_database: Database, pg_schema: str
) -> None:
    for durability, expected in (("none", "off"), ("fsync", "on")):
        log = PostgresLog(pg_database.dsn, durability=durability, schema=pg_schema)  # type: ignore[arg-type]
        list(log.scan())
        assert log._conn is not None
        row = log._conn.execute("SHOW synchronous_commit").fetchone()
        log._conn.commit()
        assert row == (expected,)
        log.close()


# -- a runtime on PostgreSQL -------------------------------------------------------------------


@af.workflow
async def approval(order: str) -> dict[str, Any]:
    decision = await af.create_hook(token=f"approval:{order}")
    return {"order": order, "decision": decision}


@pytest.mark.anyio
async def test_a_runtime_on_postgres_survives_restarts(
    pg_database: Database, pg_schema: str, tmp_path: Path
) -> None:
    """Start a run that waits on a hook, restart, resume it, restart again: the result is there."""

    def store() -> PostgresLog:
        return PostgresLog(pg_database.dsn, schema=pg_schema)

    async with af.Runtime(tmp_path, workflows=[approval], store=store()) as rt:
        run = await rt.start(approval, "o-1")
        finished = await rt.start(approval, "o-2")
        await resume_when_ready(rt, "approval:o-2", {"ok": True})
        assert await finished.result() == {"order": "o-2", "decision": {"ok": True}}
    async with af.Runtime(tmp_path, workflows=[approval], store=store()) as rt:
        assert await rt.get_run(run.run_id).status() in ("pending", "running")
        await resume_when_ready(rt, "approval:o-1", {"ok": False})
        assert await rt.get_run(run.run_id).result() == {"order": "o-1", "decision": {"ok": False}}
    async with af.Runtime(tmp_path, workflows=[approval], store=store()) as rt:
        assert await rt.get_run(run.run_id).result() == {"order": "o-1", "decision": {"ok": False}}
        assert await rt.get_run(finished.run_id).status() == "completed"
    types = [row[3] for row in rows(pg_database, pg_schema) if row[2] == run.run_id]
    assert types[0] == "run_created" and types[-1] == "run_completed"
    assert types.count("hook_received") == 1


@pytest.mark.anyio
async def test_a_second_runtime_on_the_same_schema_is_refused(
    pg_database: Database, pg_schema: str, tmp_path: Path
) -> None:
    async with af.Runtime(
        tmp_path / "a", workflows=[approval], store=PostgresLog(pg_database.dsn, schema=pg_schema)
    ):
        second = af.Runtime(
            tmp_path / "b",
            workflows=[approval],
            store=PostgresLog(pg_database.dsn, schema=pg_schema),
        )
        with pytest.raises(StorageError, match="already open in another actorflow runtime"):
            await second.__aenter__()
