"""The core's semantics tests and its crash-at-every-append tests, run again on ``ClusterLog``.

Issue 7 asks that the PostgreSQL backend pass the core's own tests (buffering, exactly-once,
token release, crash at every append), and not only a suite written for it. This module collects
the test functions of ``tests/runtime/test_semantics.py``, and the live crash test of
``tests/runtime/test_recovery.py`` with its reference run, a second time and unchanged. The
``on_postgres`` fixture makes these substitutions:

- ``backend.opening_stores_with`` (the runtime's seam for this): a runtime given no ``store=``
  opens a :class:`ClusterLog` on this test run's database. Its schema is named after the data directory, so reopening a directory
  reopens the same schema, which the restart tests need. Its node is ``Runtime.node_id``, which
  differs for every ``Runtime`` object, as it does for every process. When a test wraps a file
  log in a store of its own (``RecordingStore``, or ``CrashingStore``, which fails after record
  k), the wrapper is kept and wraps a ``ClusterLog`` instead; the runtime finds the shared log
  under the wrapper's ``inner`` and joins the schema as a node, as it does for a bare
  ``ClusterLog``.
- ``read_events`` / ``read_records`` in the tests' modules read the schema's ``events`` table in
  position order instead of the file log.
- ``test_recovery.deliver_all`` is given an ended run that the runtime does not hold, and
  returns at once. A node folds only the runs it owns, and an ended run has no owner. The file
  log's runtime folds every run, so the helper finds the run in ``rt.state.runs`` and sees that
  it has ended.

Durability is the runtime's default, ``"fsync"`` (``synchronous_commit`` on), for every test. It
costs no measurable time here.

``XFAIL`` would list tests that fail on this backend, each with the bug that makes it fail;
it is empty. ``SKIPPED`` is for tests that read the file log's own files or bytes, or that hold for one
process only, each with why. New tests in these modules run here without
any change.
"""

from __future__ import annotations

import hashlib
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.postgres.conftest import Database, require_psycopg

require_psycopg()

from psycopg import sql  # noqa: E402
from tests.runtime import (  # noqa: E402
    test_deploys,
    test_recovery,
    test_run_surface,
    test_semantics,
    test_streams,
)

from actorflow.runtime.backend import StoreConfig, opening_stores_with  # noqa: E402
from actorflow.runtime.core.events import Event  # noqa: E402
from actorflow.runtime.log.file_log import FileLog  # noqa: E402
from actorflow.runtime.log.postgres_cluster import ClusterLog  # noqa: E402
from actorflow.runtime.log.store import EventStore  # noqa: E402
from actorflow.runtime.payloads import Payloads  # noqa: E402
from actorflow.runtime.runtime import Runtime  # noqa: E402

pytestmark = pytest.mark.anyio

#: The modules whose tests run again here, and which of their tests (``None``: all of them).
SOURCES: list[tuple[types.ModuleType, set[str] | None]] = [
    (test_semantics, None),
    # The reference run and the live crash: a store that lets k records through, then fails.
    # The prefix variant copies file-log records into new directories: no PostgreSQL analogue.
    (test_recovery, {"test_uninterrupted_journey", "test_crash_after_every_append_live"}),
    # Issue 17: every kind of change between a stop and a start, patches, versions.
    (test_deploys, None),
    # Streams (issue 14): the same tests with the chunks in the events table.
    (test_streams, None),
    (test_run_surface, None),
]

#: Tests that read the file log's own files or bytes, with why they cannot run here.
SKIPPED: dict[str, str] = {
    "test_another_versions_run_takes_deliveries_and_waits_in_one_process": (
        "on a shared schema a run of another version has no owner while only nodes of other "
        "versions run; tests/postgres/test_versions.py covers deliveries between versions"
    ),
}

#: Tests that fail on the PostgreSQL backend: the test, the bug, whether it fails every time.
#: (Empty: the two bugs this module found, keyed resumes acknowledged before they were in the
#: run's history and keyed retries refused once their hook was gone, are fixed.)
XFAIL: dict[str, tuple[str, bool]] = {}

ENDED = ("completed", "failed", "cancelled")


def schema_for(data_dir: Path) -> str:
    """The schema standing for a data directory: the same directory, the same schema."""
    digest = hashlib.blake2b(str(Path(data_dir).resolve()).encode(), digest_size=10).hexdigest()
    return f"d_{digest}"


def _log_schema(directory: Path) -> str:
    # Every caller passes "<data dir>/log", where the file log would be.
    directory = Path(directory)
    assert directory.name == "log", f"not a runtime's log directory: {directory}"
    return schema_for(directory.parent)


def _records(db: Database, directory: Path) -> list[tuple[int, bytes]]:
    schema = _log_schema(directory)
    exists = db.query("SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".events',))
    if not exists[0][0]:
        return []
    rows = db.query(
        sql.SQL("SELECT position, record FROM {} ORDER BY position").format(
            sql.Identifier(schema, "events")
        )
    )
    return [(int(position), bytes(record)) for position, record in rows]


@pytest.fixture(autouse=True)
def on_postgres(
    request: pytest.FixtureRequest, pg_database: Database, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Every runtime of the test opens its data directory's schema in ``pg_database``."""

    def cluster_log(config: StoreConfig) -> ClusterLog:
        return ClusterLog(
            pg_database.dsn,
            node_id=config.node_id,
            schema=schema_for(config.data_dir),
            durability=config.durability,
            version=config.version,
        )

    def open_store(config: StoreConfig) -> EventStore | None:
        given = config.store
        if given is None:
            return cluster_log(config)
        inner = getattr(given, "inner", None)
        if isinstance(inner, FileLog):
            assert inner.directory == config.data_dir / "log", "a wrapped log outside the data dir"
            log = cluster_log(config)
            wrapper: Any = given
            wrapper.inner = log  # the runtime finds the shared log under a wrapper's ``inner``
            wrapper.durability = log.durability
            return wrapper  # type: ignore[no-any-return]
        return None

    def read_records(directory: Path) -> list[bytes]:
        return [record for _, record in _records(pg_database, directory)]

    def read_events(directory: Path) -> list[Event]:
        decode = Payloads(None).decode_plain
        return [decode(record, position) for position, record in _records(pg_database, directory)]

    for src, _ in SOURCES:
        monkeypatch.setattr(src, "read_records", read_records, raising=False)
        monkeypatch.setattr(src, "read_events", read_events, raising=False)

    deliver_all = test_recovery.deliver_all

    async def deliver_all_to_any_run(rt: Runtime, run_id: str, tag: str) -> None:
        if run_id not in rt.state.runs:
            # A node folds only the runs it owns, and an ended run has no owner. The file log's
            # runtime folds every run. An ended run has nothing left to deliver.
            assert await rt.get_run(run_id).status() in ENDED, run_id
            return
        await deliver_all(rt, run_id, tag)

    monkeypatch.setattr(test_recovery, "deliver_all", deliver_all_to_any_run)
    with opening_stores_with(open_store, poll_interval=0.05):  # as in test_cluster.py
        yield


def _copy(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """An independent copy of a test function: marks added here stay off the original."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__dict__.update({k: list(v) if k == "pytestmark" else v for k, v in fn.__dict__.items()})
    copy.__module__ = fn.__module__
    copy.__qualname__ = fn.__qualname__
    copy.__doc__ = fn.__doc__
    copy.__annotations__ = dict(fn.__annotations__)
    return copy


def _collect() -> dict[str, Callable[..., Any]]:
    found: dict[str, Callable[..., Any]] = {}
    for module, chosen in SOURCES:
        names = [n for n in vars(module) if n.startswith("test_") and callable(vars(module)[n])]
        if chosen is not None:
            missing = chosen - set(names)
            assert not missing, f"{module.__name__} has no {sorted(missing)}"
            names = [n for n in names if n in chosen]
        for name in names:
            assert name not in found, f"two source modules define {name}"
            test = _copy(vars(module)[name], name)
            if name in SKIPPED:
                test = pytest.mark.skip(reason=SKIPPED[name])(test)
            if name in XFAIL:
                reason, strict = XFAIL[name]
                test = pytest.mark.xfail(strict=strict, reason=reason)(test)
            found[name] = test
    unknown = (set(SKIPPED) | set(XFAIL)) - set(found)
    assert not unknown, f"SKIPPED/XFAIL name tests that do not run here: {sorted(unknown)}"
    return found


globals().update(_collect())
