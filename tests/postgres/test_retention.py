"""Retention on PostgreSQL: ``ClusterLog.prune_expired`` and the batches it deletes in.

Time is injected, never waited for: runs are written by a runtime whose clock runs 40 days
behind (``clock.offset``), so they ended (or started) 40 days ago by the log's own times, and the
prune is given the cutoff "seven days ago". What is checked, against the real server:

- a prune deletes exactly the runs that ended before the cutoff, and every row of theirs in every
  table; live runs keep their whole history and go on after the prune and a restart (checked by
  payload id), and an expired run then reads as not found;
- N runs take ceil(N / batch_size) batches, each committed before the next starts;
- a batch held open with all its locks blocks no append: resumes, starts and ends go through;
- an error between batches, or a kill -9 in the middle of a batch, leaves every run whole;
- the upgrade to schema version 4 dates the runs that had already ended.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql
from tests.postgres.conftest import Database, require_psycopg

require_psycopg()

from tests.postgres.test_cluster import approval, collect, hook_of, sleeper, until  # noqa: E402

import actorflow as af  # noqa: E402
from actorflow.errors import (  # noqa: E402
    HookNotFoundError,
    WorkflowRunFailedError,
    WorkflowRunNotFoundError,
)
from actorflow.runtime.core.events import Event  # noqa: E402
from actorflow.runtime.ids import new_id  # noqa: E402
from actorflow.runtime.log import postgres  # noqa: E402
from actorflow.runtime.log.postgres_cluster import ClusterLog, _ClusterQueries  # noqa: E402
from actorflow.runtime.log.postgres_retention import (  # noqa: E402
    PruneReport,
    prune_batch,
    prune_expired,
)
from actorflow.runtime.payloads import Payloads  # noqa: E402

DAY = 86400.0
TABLES = ("runs", "events", "hooks", "timers", "inbox", "delivery_keys")


@af.workflow
async def broken() -> None:
    raise af.FatalError("broken on purpose")


WORKFLOWS = [approval, collect, sleeper, broken]


def store(db: Database, schema: str, node: str) -> ClusterLog:
    return ClusterLog(db.dsn, node_id=node, schema=schema, durability="none")


def runtime(path: Path, log: ClusterLog, offset: float) -> af.Runtime:
    """A node whose clock reads ``offset`` seconds from now (a process of another day)."""
    rt = af.Runtime(path, WORKFLOWS, store=log, poll_interval=0.05)
    rt.clock.offset = offset
    return rt


def seven_days_ago() -> float:
    return time.time() - 7 * DAY


def rows_by_run(db: Database, schema: str) -> dict[str, dict[str, set[tuple[Any, ...]]]]:
    """Every row of the run tables, per table, per run (``delivery_keys`` through the event or
    inbox record its key names)."""
    out: dict[str, dict[str, set[tuple[Any, ...]]]] = {name: {} for name in TABLES}

    def t(name: str) -> sql.Identifier:
        return sql.Identifier(schema, name)

    queries = {
        "runs": sql.SQL("SELECT run_id, status, start_key, ended_at FROM {}").format(t("runs")),
        "events": sql.SQL("SELECT run_id, event_id, position FROM {}").format(t("events")),
        "hooks": sql.SQL("SELECT run_id, token, hook_id FROM {}").format(t("hooks")),
        "timers": sql.SQL("SELECT run_id, wait_id FROM {}").format(t("timers")),
        "inbox": sql.SQL("SELECT run_id, event_id FROM {}").format(t("inbox")),
        "delivery_keys": sql.SQL(
            "SELECT coalesce(e.run_id, i.run_id, ''), k.token, k.key FROM {} k"
            " LEFT JOIN {} e ON e.event_id = k.event_id LEFT JOIN {} i ON i.event_id = k.event_id"
        ).format(t("delivery_keys"), t("events"), t("inbox")),
    }
    for name, query in queries.items():
        for row in db.query(query):
            out[name].setdefault(str(row[0]), set()).add(tuple(row))
    return out


def count(db: Database, schema: str, table: str, where: str = "true", params: Any = None) -> int:
    query = sql.SQL("SELECT count(*) FROM {} WHERE " + where).format(sql.Identifier(schema, table))
    return int(db.query(query, params)[0][0])


def records_with(db: Database, schema: str, run_id: str, needle: bytes) -> int:
    """How many of the run's ``hook_received`` records hold ``needle`` (a payload id)."""
    query = sql.SQL("SELECT record FROM {} WHERE run_id = %s AND type = 'hook_received'").format(
        sql.Identifier(schema, "events")
    )
    return sum(needle in bytes(row[0]) for row in db.query(query, (run_id,)))


# -- what a prune deletes and what it keeps ----------------------------------------------------


@pytest.mark.anyio
async def test_a_prune_deletes_exactly_the_runs_ended_before_the_cutoff_and_all_of_theirs(
    pg_database: Database, pg_schema: str, tmp_path: Path
) -> None:
    db, schema = pg_database, pg_schema
    # Forty days ago: three runs end (completed with a keyed delivery and a start key, failed,
    # cancelled), one waits on its hook after a first payload, one sleeps for 40 days.
    old = runtime(tmp_path / "old", store(db, schema, "old"), offset=-40 * DAY)
    async with old as rt:
        done = await rt.start_once("start-done", approval, "done")
        await hook_of(rt, "approval:done")
        await rt.resume_hook("approval:done", {"id": "p-done"}, idempotency_key="k-done")
        await done.result(timeout=10)
        failed = await rt.start(broken)
        with pytest.raises(WorkflowRunFailedError):
            await failed.result(timeout=10)
        cancelled = await rt.start(approval, "cancelled")
        await hook_of(rt, "approval:cancelled")
        await rt.cancel_run(cancelled.run_id)
        waiting = await rt.start(collect, "live", 2)
        await hook_of(rt, "collect:live")
        await rt.resume_hook("collect:live", {"id": "p-live-1"}, idempotency_key="k-live-1")
        await until(lambda: records_with(db, schema, waiting.run_id, b"p-live-1"))
        sleeping = await rt.start(sleeper, 40 * DAY + 60)
        await until(lambda: count(db, schema, "timers", "run_id = %s", (sleeping.run_id,)))
    expired = {done.run_id, failed.run_id, cancelled.run_id}
    live = {waiting.run_id, sleeping.run_id}
    waiting_history = {row[1] for row in rows_by_run(db, schema)["events"][waiting.run_id]}

    log = store(db, schema, "today")
    async with runtime(tmp_path / "today", log, offset=0) as rt:
        recent = await rt.start(approval, "recent")
        await hook_of(rt, "approval:recent")
        await rt.resume_hook("approval:recent", {"id": "p-recent"}, idempotency_key="k-recent")
        await recent.result(timeout=10)
        # What crashed nodes can leave of an ended run: a token claim never released, a
        # timer, a delivery in the inbox with its key; and the rows of dead nodes.
        t = {name: sql.Identifier(schema, name) for name in (*TABLES, "nodes")}
        db.run(sql.SQL("INSERT INTO {} (token, run_id, hook_id) VALUES ('left', %s, 'h')")
               .format(t["hooks"]), (done.run_id,))  # fmt: skip
        db.run(sql.SQL("INSERT INTO {} (wait_id, run_id, due_at) VALUES ('w-left', %s, 0)")
               .format(t["timers"]), (done.run_id,))  # fmt: skip
        db.run(sql.SQL("INSERT INTO {} (run_id, token, event_id, record) "
                       "VALUES (%s, 'approval:done', 'evnt_left', '\\x7b7d')")
               .format(t["inbox"]), (done.run_id,))  # fmt: skip
        db.run(sql.SQL("INSERT INTO {} (token, key, hook_id, digest, event_id) "
                       "VALUES ('approval:done', 'k-left', 'h', 'd', 'evnt_left')")
               .format(t["delivery_keys"]))  # fmt: skip
        db.run(sql.SQL("INSERT INTO {} (node_id, lease_until) VALUES "
                       "('ghost', now() - interval '2 hours'), ('dozing', now() - interval '1 minute')")
               .format(t["nodes"]))  # fmt: skip

        before = rows_by_run(db, schema)
        assert recent.run_id not in expired | live and set(before["runs"]) == expired | live | {
            recent.run_id
        }
        cutoff = seven_days_ago()
        report = await anyio.to_thread.run_sync(lambda: log.prune_expired(cutoff, batch_size=2))
        after = rows_by_run(db, schema)

        def rows(of: dict[str, dict[str, set[tuple[Any, ...]]]], table: str) -> int:
            return sum(len(of[table].get(run_id, ())) for run_id in expired)

        assert report == PruneReport(
            runs=3,
            events=rows(before, "events"),
            hooks=1,
            timers=1,
            inbox=1,
            delivery_keys=2,  # k-done and k-left
            nodes=1,
            batches=3,  # two of runs (2 + 1), one of nodes
        )
        assert rows(before, "events") >= 3 * 3
        for table in TABLES:
            assert not expired & set(after[table]), table
            for run_id in live | {recent.run_id}:
                assert after[table].get(run_id) == before[table].get(run_id), (table, run_id)
        nodes = {row[0] for row in db.query(sql.SQL("SELECT node_id FROM {}").format(t["nodes"]))}
        assert nodes == {"today", "dozing"}

        # An expired run reads as one that never existed; its keys and start key are free.
        for run_id in expired:
            with pytest.raises(WorkflowRunNotFoundError):
                await rt.get_run(run_id).status()
            with pytest.raises(WorkflowRunNotFoundError):
                await rt.cancel_run(run_id)
        with pytest.raises(HookNotFoundError):
            await rt.resume_hook("approval:done", {"id": "p-done"}, idempotency_key="k-done")
        again = await rt.start_once("start-done", approval, "again")
        assert again.run_id != done.run_id
        assert await rt.get_run(recent.run_id).result(timeout=10) == {
            "order": "recent",
            "decision": {"id": "p-recent"},
        }

    # Restarted later: the 40-day-old runs go on, their history whole.
    later = runtime(tmp_path / "later", store(db, schema, "later"), offset=120)
    async with later as rt:
        await rt.resume_hook("collect:live", {"id": "p-live-2"}, idempotency_key="k-live-2")
        assert await rt.get_run(waiting.run_id).result(timeout=10) == [
            {"id": "p-live-1"},
            {"id": "p-live-2"},
        ]
        assert await rt.get_run(sleeping.run_id).result(timeout=10) == "woke"
    history = {row[1] for row in rows_by_run(db, schema)["events"][waiting.run_id]}
    assert waiting_history < history
    assert records_with(db, schema, waiting.run_id, b'"p-live-1"') == 1
    assert records_with(db, schema, waiting.run_id, b'"p-live-2"') == 1


# -- batches ------------------------------------------------------------------------------------


def write_runs(
    log: ClusterLog, n: int, *, ended_at: float | None, start: float | None = None
) -> list[str]:
    """``n`` runs written through the store, each ``run_created``, ``run_started``, a hook
    and, if ``ended_at`` is given, ``run_completed`` at ``ended_at + i``."""
    payloads = Payloads(None)
    first = ended_at if start is None else start
    assert first is not None
    run_ids, records = [], []
    for i in range(n):
        run_id = new_id("wrun_")
        run_ids.append(run_id)
        hook_id = new_id("hook_")
        steps: list[tuple[str, str | None, dict[str, Any]]] = [
            ("run_created", None, {"workflow": "approval", "input": {}}),
            ("run_started", None, {}),
            ("hook_created", hook_id, {"token": f"tok-{run_id}"}),
        ]
        if ended_at is not None:
            steps += [
                ("hook_disposed", hook_id, {"token": f"tok-{run_id}"}),
                ("run_completed", None, {"result": None}),
            ]
        for kind, corr, data in steps:
            at = ended_at + i if ended_at is not None and kind == "run_completed" else first
            event = Event(new_id("evnt_"), run_id, kind, corr, at, data)
            records.append(payloads.encode(event))
    log.append(records)
    log.sync()
    return run_ids


def opened(db: Database, schema: str, node: str) -> ClusterLog:
    log = store(db, schema, node)
    for _ in log.scan():
        pass
    return log


@pytest.mark.parametrize(("n", "batch_size"), [(7, 3), (6, 3), (7, 7), (5, 1)])
def test_n_runs_take_ceil_n_over_b_batches_each_committed_before_the_next(
    pg_database: Database, pg_schema: str, n: int, batch_size: int
) -> None:
    db, schema = pg_database, pg_schema
    log = opened(db, schema, "writer")
    try:
        expired = write_runs(log, n, ended_at=time.time() - 30 * DAY)
        kept = write_runs(log, 2, ended_at=time.time())
        live = write_runs(log, 2, ended_at=None, start=time.time() - 30 * DAY)
        seen: list[tuple[int, int, int]] = []

        def on_batch(done: PruneReport) -> None:
            # Seen from another connection: the batch has committed, and only it.
            left = count(db, schema, "runs", "run_id = ANY(%s)", (expired,))
            orphans = count(
                db, schema, "events", "run_id = ANY(%s) AND run_id NOT IN (SELECT run_id FROM "
                + sql.Identifier(schema, "runs").as_string(db.admin) + ")", (expired,)
            )  # fmt: skip
            seen.append((done.runs, left, orphans))

        report = prune_expired(db.dsn, schema, seven_days_ago(), batch_size=batch_size,
                               on_batch=on_batch)  # fmt: skip
    finally:
        log.close()
    batches = math.ceil(n / batch_size)
    assert report.batches == batches and report.runs == n and report.events == 5 * n
    sizes = [min(batch_size, n - i * batch_size) for i in range(batches)]
    assert seen == [(size, n - sum(sizes[: i + 1]), 0) for i, size in enumerate(sizes)]
    assert count(db, schema, "runs", "run_id = ANY(%s)", (expired,)) == 0
    assert count(db, schema, "events", "run_id = ANY(%s)", (expired,)) == 0
    assert count(db, schema, "runs", "run_id = ANY(%s)", (kept + live,)) == 4
    assert count(db, schema, "events", "run_id = ANY(%s)", (kept,)) == 10
    assert count(db, schema, "events", "run_id = ANY(%s)", (live,)) == 6
    assert count(db, schema, "hooks", "run_id = ANY(%s)", (live,)) == 2


def test_only_nodes_long_dead_that_own_no_live_run_are_forgotten(
    pg_database: Database, pg_schema: str
) -> None:
    db, schema = pg_database, pg_schema
    log = opened(db, schema, "alive")
    try:
        live = write_runs(log, 1, ended_at=None, start=time.time())
    finally:
        log.close()  # hands its run back: owner NULL, an orphan for the next node
    nodes = sql.Identifier(schema, "nodes")
    runs = sql.Identifier(schema, "runs")
    db.run(sql.SQL("INSERT INTO {} (node_id, lease_until, fenced) VALUES "
                   "('gone', now() - interval '2 hours', true), "
                   "('owner', now() - interval '2 hours', true), "
                   "('late', now() - interval '5 minutes', false), "
                   "('well', now() + interval '1 minute', false)").format(nodes))  # fmt: skip
    db.run(sql.SQL("UPDATE {} SET owner = 'owner' WHERE run_id = %s").format(runs), (live[0],))
    report = prune_expired(db.dsn, schema, seven_days_ago())
    assert report == PruneReport(nodes=1, batches=1)
    left = {row[0] for row in db.query(sql.SQL("SELECT node_id FROM {}").format(nodes))}
    assert left == {"owner", "late", "well"}
    shorter = prune_expired(db.dsn, schema, seven_days_ago(), dead_node_seconds=60)
    assert shorter.nodes == 1
    assert count(db, schema, "nodes", "node_id = 'late'") == 0


def test_bad_arguments_are_refused_before_anything_is_deleted(
    pg_database: Database, pg_schema: str
) -> None:
    log = opened(pg_database, pg_schema, "n")
    try:
        write_runs(log, 2, ended_at=time.time() - 30 * DAY)
        for before, size in [(math.nan, 10), (math.inf, 10), ("yesterday", 10), (1.0, 0),
                             (1.0, -5), (1.0, 2.5), (True, 10)]:  # fmt: skip
            with pytest.raises(ValueError, match="ended_before|batch_size"):
                log.prune_expired(before, batch_size=size)  # type: ignore[arg-type]
        assert count(pg_database, pg_schema, "runs") == 2
    finally:
        log.close()


# -- a prune beside live work -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_prune_batch_holding_its_locks_blocks_no_resume_start_or_end(
    pg_database: Database, pg_schema: str, tmp_path: Path
) -> None:
    db, schema = pg_database, pg_schema
    old = runtime(tmp_path / "old", store(db, schema, "old"), offset=-40 * DAY)
    async with old as rt:
        ended = []
        for i in range(20):
            run = await rt.start(approval, f"old-{i}")
            await hook_of(rt, f"approval:old-{i}")
            await rt.resume_hook(f"approval:old-{i}", {"id": f"o-{i}"}, idempotency_key="k")
            ended.append(run)
        for run in ended:
            await run.result(timeout=10)
        busy = await rt.start(collect, "busy", 3)
        await hook_of(rt, "collect:busy")

    async with runtime(tmp_path / "now", store(db, schema, "now"), offset=0) as rt:
        holder = psycopg.connect(db.dsn, application_name="actorflow-tests")
        try:
            held = prune_batch(holder, schema, seven_days_ago(), 1000)  # not committed
            assert held.runs == 20 and held.delivery_keys == 20
            locks = db.query(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE a.application_name = 'actorflow-tests' AND l.mode = 'RowExclusiveLock' "
                "AND a.pid <> pg_backend_pid()"
            )
            assert locks[0][0] >= len(TABLES)
            with anyio.fail_after(20):
                # Local and keyed (through the inbox and delivery_keys) resumes, a new run
                # started and ended: each commits while the batch holds its locks.
                await rt.resume_hook("collect:busy", {"id": "b-1"})
                await rt.resume_hook("collect:busy", {"id": "b-2"}, idempotency_key="k")
                during = await rt.start(approval, "during")
                await hook_of(rt, "approval:during")
                await rt.resume_hook("approval:during", {"id": "d-1"}, idempotency_key="k")
                assert (await during.result())["decision"] == {"id": "d-1"}
                await rt.resume_hook("collect:busy", {"id": "b-3"}, idempotency_key="k2")
                got = await rt.get_run(busy.run_id).result()
            assert got == [{"id": "b-1"}, {"id": "b-2"}, {"id": "b-3"}]
            # Still held: the expired runs are all there for everyone else.
            assert count(db, schema, "runs", "run_id = ANY(%s)", ([r.run_id for r in ended],)) == 20
            holder.commit()
        finally:
            holder.close()
        assert count(db, schema, "runs", "run_id = ANY(%s)", ([r.run_id for r in ended],)) == 0
        assert count(db, schema, "delivery_keys") == 3  # b-2, d-1, b-3
        for payload_id in (b'"b-1"', b'"b-2"', b'"b-3"'):
            assert records_with(db, schema, busy.run_id, payload_id) == 1


def test_a_run_held_by_a_cancel_on_its_way_is_left_for_the_next_prune(
    pg_database: Database, pg_schema: str
) -> None:
    db, schema = pg_database, pg_schema
    log = opened(db, schema, "n")
    try:
        runs = write_runs(log, 3, ended_at=time.time() - 30 * DAY)
    finally:
        log.close()
    q = _ClusterQueries(schema)
    cancel = psycopg.connect(db.dsn, application_name="actorflow-tests")
    try:
        # Directory.enqueue's first statement, its transaction still open (inbox row next).
        assert cancel.execute(q.run_owner_held, (runs[1],)).fetchone() is not None
        first = prune_expired(db.dsn, schema, seven_days_ago())  # skips it, never waits
        assert first.runs == 2
        assert check_whole(db, schema, runs, 5) == {runs[1]}
    finally:
        cancel.rollback()
        cancel.close()
    assert prune_expired(db.dsn, schema, seven_days_ago()).runs == 1


def test_reusing_a_key_that_a_prune_deleted_meanwhile_still_records_it(
    pg_database: Database, pg_schema: str
) -> None:
    """A keyed delivery found the key spent on an older hook of its token and reuses it; if a
    prune deleted that key in between, the reuse must record the key, not update nothing."""
    db, schema = pg_database, pg_schema
    migrated = postgres.migrate(db.dsn, schema=schema)
    assert migrated == postgres.SCHEMA_VERSION
    q = _ClusterQueries(schema)
    db.run(q.reuse_key, ("hook_new", "digest", "evnt_new", "tok", "k"))  # gone meanwhile
    keys = sql.SQL("SELECT hook_id, digest, event_id FROM {} WHERE token = 'tok' AND key = 'k'")
    assert db.query(keys.format(sql.Identifier(schema, "delivery_keys"))) == [
        ("hook_new", "digest", "evnt_new")
    ]


# -- faults -------------------------------------------------------------------------------------


def check_whole(db: Database, schema: str, runs: list[str], events_each: int) -> set[str]:
    """Every run has its row and all its events, or neither; the set of runs still there."""
    present = {
        str(row[0])
        for row in db.query(
            sql.SQL("SELECT run_id FROM {} WHERE run_id = ANY(%s)").format(
                sql.Identifier(schema, "runs")
            ),
            (runs,),
        )
    }
    events = dict(
        db.query(
            sql.SQL(
                "SELECT run_id, count(*) FROM {} WHERE run_id = ANY(%s) GROUP BY run_id"
            ).format(sql.Identifier(schema, "events")),
            (runs,),
        )
    )
    for run_id in runs:
        assert events.get(run_id, 0) == (events_each if run_id in present else 0), run_id
    return present


class Stop(Exception):
    pass


def test_an_error_between_batches_leaves_every_run_whole_and_the_next_prune_goes_on(
    pg_database: Database, pg_schema: str
) -> None:
    db, schema = pg_database, pg_schema
    log = opened(db, schema, "n")
    try:
        runs = write_runs(log, 9, ended_at=time.time() - 30 * DAY)
    finally:
        log.close()

    def stop(done: PruneReport) -> None:
        raise Stop

    with pytest.raises(Stop):
        prune_expired(db.dsn, schema, seven_days_ago(), batch_size=4, on_batch=stop)
    assert len(check_whole(db, schema, runs, 5)) == 5
    assert prune_expired(db.dsn, schema, seven_days_ago(), batch_size=4).runs == 5
    assert check_whole(db, schema, runs, 5) == set()


_CHILD = """
import sys
from actorflow.runtime.log.postgres_retention import prune_expired
print(prune_expired(sys.argv[1], sys.argv[2], float(sys.argv[3]), batch_size=2), flush=True)
"""


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll another process's visible effect (real time: it is a real process)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def test_a_kill_9_in_the_middle_of_a_batch_leaves_every_run_whole(
    pg_database: Database, pg_schema: str
) -> None:
    db, schema = pg_database, pg_schema
    log = opened(db, schema, "n")
    try:
        runs = write_runs(log, 10, ended_at=time.time() - 30 * DAY)
    finally:
        log.close()
    # The third batch (runs 5 and 6 by end time) will wait on this lock, mid-statement, with
    # its runs locked and part of its deletes done: the child is killed right there.
    blocker = psycopg.connect(db.dsn, application_name="actorflow-tests-blocker")
    events = sql.Identifier(schema, "events")
    blocker.execute(
        sql.SQL("SELECT 1 FROM {} WHERE run_id = %s FOR UPDATE").format(events), (runs[5],)
    )
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, db.dsn, schema, str(seven_days_ago())],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        waiting = wait_for(
            lambda: db.query(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                "application_name = 'actorflow-prune' AND wait_event_type = 'Lock'",
                (db.name,),
            )[0][0]
        )
        assert waiting == 1, "the prune never reached the locked run"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        assert child.stderr is not None
        child.stderr.close()
        blocker.rollback()
        blocker.close()
    # The killed client's backend finishes its statement, finds no one to answer, and rolls back.
    gone = wait_for(
        lambda: (
            not db.query(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                "application_name = 'actorflow-prune'",
                (db.name,),
            )[0][0]
        )
    )
    assert gone
    assert check_whole(db, schema, runs, 5) == set(runs[4:])
    assert prune_expired(db.dsn, schema, seven_days_ago()).runs == 6
    assert check_whole(db, schema, runs, 5) == set()


# -- the upgrade -----------------------------------------------------------------------------


def test_runs_ended_by_a_node_of_the_previous_version_are_dated_then_pruned(
    pg_database: Database, pg_schema: str
) -> None:
    db, schema = pg_database, pg_schema
    log = opened(db, schema, "n")
    old, recent = time.time() - 30 * DAY, time.time() - DAY
    try:
        expired = write_runs(log, 3, ended_at=old)
        kept = write_runs(log, 1, ended_at=recent)
    finally:
        log.close()
    runs = sql.Identifier(schema, "runs")
    # What version 3's append leaves on a version 4 schema: the status, no ended_at.
    db.run(sql.SQL("UPDATE {} SET ended_at = NULL").format(runs))
    report = prune_expired(db.dsn, schema, seven_days_ago(), batch_size=2)
    assert (report.dated, report.runs, report.batches) == (4, 3, 2)
    assert check_whole(db, schema, expired + kept, 5) == set(kept)
    dated = db.query(sql.SQL("SELECT ended_at FROM {}").format(runs))
    assert dated == [(pytest.approx(recent),)]


def test_the_upgrade_to_version_3_dates_the_runs_already_ended(
    pg_database: Database, pg_schema: str
) -> None:
    db, schema = pg_database, pg_schema
    log = opened(db, schema, "n")
    ended_at = time.time() - 30 * DAY
    try:
        ended = write_runs(log, 3, ended_at=ended_at)
        live = write_runs(log, 1, ended_at=None, start=ended_at)
    finally:
        log.close()
    # Back to version 3 as it was: no ended_at, no index on delivery keys' events (and none of
    # version 5's peer columns, which come after).
    t = {name: sql.Identifier(schema, name) for name in ("runs", "delivery_keys")}
    db.run(sql.SQL("ALTER TABLE {} DROP COLUMN ended_at").format(t["runs"]))
    db.run(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, "delivery_keys_event")))
    db.run(sql.SQL("ALTER TABLE {} DROP COLUMN peer").format(sql.Identifier(schema, "nodes")))
    db.run(sql.SQL("ALTER TABLE {} DROP COLUMN forwarded").format(sql.Identifier(schema, "inbox")))
    db.run(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "peer_secret")))
    db.run(sql.SQL("DELETE FROM {} WHERE version >= 4").format(
        sql.Identifier(schema, "schema_version")))  # fmt: skip
    assert postgres.migrate(db.dsn, schema=schema) == postgres.SCHEMA_VERSION
    dated = dict(db.query(sql.SQL("SELECT run_id, ended_at FROM {}").format(t["runs"])))
    assert [dated[run_id] for run_id in ended] == pytest.approx(
        [ended_at + i for i in range(3)], abs=1e-3
    )
    assert dated[live[0]] is None
    assert prune_expired(db.dsn, schema, seven_days_ago()).runs == 3


# -- the runtime's retention pass drives the prune ---------------------------------------------


@pytest.mark.anyio
async def test_the_runtimes_retention_pass_prunes_expired_runs(
    tmp_path: Path, pg_database: Database, pg_schema: str
) -> None:
    """``Runtime.compact()`` on PostgreSQL expires finished runs from memory and prunes their
    rows through the store; live runs keep everything."""
    async with runtime(tmp_path / "a", store(pg_database, pg_schema, "a"), 0.0) as rt:
        done = await rt.start(approval, "gone")
        await hook_of(rt, "approval:gone")
        await rt.resume_hook("approval:gone", "yes")
        await done.result(timeout=10)
        live = await rt.start(approval, "kept")
        await hook_of(rt, "approval:kept")
    async with runtime(tmp_path / "b", store(pg_database, pg_schema, "b"), 8 * DAY) as rt:
        report = await rt.compact()
        assert report.pruned is not None and report.pruned.runs == 1
        with pytest.raises(af.WorkflowRunNotFoundError):
            await rt.get_run(done.run_id).status()
        await hook_of(rt, "approval:kept")
        await rt.resume_hook("approval:kept", "yes")
        result = await rt.get_run(live.run_id).result(timeout=10)
        assert result == {"order": "kept", "decision": "yes"}
