"""The shared schema's life: ``actorflow db migrate``, and a version 1 log (one runtime) upgraded
to version 2 (many) with its runs, live hooks and timers indexed so that nodes find them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from psycopg import sql
from tests.postgres.conftest import Database, require_psycopg

require_psycopg()

from tests.postgres.test_cluster import WORKFLOWS, approval, hook_of, sleeper  # noqa: E402

import actorflow as af  # noqa: E402
from actorflow.runtime.log import postgres  # noqa: E402
from actorflow.runtime.log.postgres import PostgresLog  # noqa: E402
from actorflow.runtime.log.postgres_cluster import ClusterLog  # noqa: E402


def actorflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from actorflow.cli import main; sys.exit(main())",
         *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_db_migrate_creates_then_finds_the_schema_current(
    pg_database: Database, pg_schema: str
) -> None:
    first = actorflow("db", "migrate", "--store", pg_database.url, "--schema", pg_schema)
    assert first.returncode == 0, first.stderr
    assert f"schema {pg_schema!r} is at version {postgres.SCHEMA_VERSION}" in first.stdout
    again = actorflow("db", "migrate", "--store", pg_database.url, "--schema", pg_schema)
    assert again.returncode == 0 and again.stdout == first.stdout
    tables = {
        row[0]
        for row in pg_database.query(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (pg_schema,)
        )
    }
    assert {"events", "nodes", "runs", "hooks", "timers", "inbox", "delivery_keys"} <= tables


def test_db_migrate_names_what_is_missing_or_wrong() -> None:
    missing = actorflow("db", "migrate")
    assert missing.returncode == 2 and "--store" in missing.stderr
    unreachable = actorflow("db", "migrate", "--store", "postgresql://nobody@127.0.0.1:1/x")
    assert unreachable.returncode == 1 and "cannot connect" in unreachable.stderr
    bad = actorflow("db", "migrate", "--store", "postgresql://x@127.0.0.1/x", "--schema", "a;b")
    assert bad.returncode == 1 and "plain identifier" in bad.stderr


def test_serve_refuses_a_schema_behind_with_no_migrate(
    pg_database: Database, pg_schema: str, tmp_path: Path
) -> None:
    served = actorflow(
        "serve", "reliability_app", "--app-dir", str(Path(__file__).parents[1] / "fixtures"),
        "--bind", "127.0.0.1:0", "--store", pg_database.url, "--schema", pg_schema,
        "--no-migrate",
    )  # fmt: skip
    assert served.returncode == 1
    assert "run migrate()" in served.stderr or "actorflow db migrate" in served.stderr


@pytest.mark.anyio
async def test_a_version_1_log_is_indexed_by_the_upgrade_and_its_runs_go_on(
    pg_database: Database, pg_schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Write a log as version 1 did: the events table only, one runtime.
    with monkeypatch.context() as v1:
        v1.setattr(postgres, "_MIGRATIONS", postgres._MIGRATIONS[:1])
        v1.setattr(postgres, "SCHEMA_VERSION", 1)
        store = PostgresLog(pg_database.dsn, schema=pg_schema)
        async with af.Runtime(tmp_path / "v1", WORKFLOWS, store=store) as rt:
            waiting = await rt.start(approval, "v1")
            done = await rt.start(approval, "done")
            sleeping = await rt.start(sleeper, 1.0)
            await hook_of(rt, "approval:v1")
            await hook_of(rt, "approval:done")
            await rt.resume_hook("approval:done", "yes")
            await done.result(timeout=10)
            await rt.wait_idle(10)
    assert pg_database.query(
        sql.SQL("SELECT max(version) FROM {}").format(sql.Identifier(pg_schema, "schema_version"))
    ) == [(1,)]

    node = ClusterLog(pg_database.dsn, node_id="upgraded", schema=pg_schema, durability="none")
    async with af.Runtime(tmp_path / "v2", WORKFLOWS, store=node, poll_interval=0.05) as rt:
        runs = dict(
            pg_database.query(
                sql.SQL("SELECT run_id, status FROM {}").format(sql.Identifier(pg_schema, "runs"))
            )
        )
        assert runs[done.run_id] == "completed"
        assert runs[waiting.run_id] == "running"
        hooks = pg_database.query(
            sql.SQL("SELECT token, run_id FROM {}").format(sql.Identifier(pg_schema, "hooks"))
        )
        assert ("approval:v1", waiting.run_id) in hooks
        assert all(token != "approval:done" for token, _ in hooks)
        await rt.resume_hook("approval:v1", "after the upgrade")
        assert await rt.get_run(waiting.run_id).result(timeout=10) == {
            "order": "v1",
            "decision": "after the upgrade",
        }
        assert await rt.get_run(sleeping.run_id).result(timeout=10) == "woke"
