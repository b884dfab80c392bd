"""The query API, its HTTP routes and the CLI on the shared PostgreSQL store.

Two nodes share a schema: each lists every run (its own and the other's) from the indexed
columns of ``runs``, reads any run's events and what it waits on.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.conftest import wait_until
from tests.postgres.conftest import Database, require_psycopg
from tests.web.conftest import Served, _served

require_psycopg()

from psycopg import sql  # noqa: E402

import actorflow as af  # noqa: E402
from actorflow.runtime.log.postgres_cluster import ClusterLog  # noqa: E402

pytestmark = pytest.mark.anyio

SECRET = "test-resume-secret-0123456789"
AUTH = {"authorization": f"Bearer {SECRET}"}
PREFIX = "/.well-known/workflow/v1"


@af.workflow
async def waits(name: str) -> str:
    return str(await af.create_hook(token=f"pg:{name}"))


@af.workflow
async def fails() -> None:
    raise ValueError("pg")


@af.workflow
async def sleeps() -> None:
    await af.sleep("3h")


WORKFLOWS = [waits, fails, sleeps]


@pytest.fixture
def served() -> Served:
    """A real Hypercorn serving a runtime (tests/web/conftest.py)."""
    return _served


@pytest.fixture
async def nodes(
    pg_database: Database, pg_schema: str, tmp_path: Path
) -> AsyncIterator[tuple[af.Runtime, af.Runtime]]:
    async with AsyncExitStack() as stack:
        made = []
        for name in ("a", "b"):
            store = ClusterLog(pg_database.dsn, node_id=name, schema=pg_schema, durability="none")
            rt = af.Runtime(tmp_path / name, WORKFLOWS, store=store, poll_interval=0.05)
            made.append(await stack.enter_async_context(rt))
        yield made[0], made[1]


async def _settled(rt: af.Runtime, run: af.Run, status: str) -> None:
    # The run may be owned by another node: its status is read from the database, polled.
    with anyio.fail_after(20):
        for _ in iter(int, 1):
            if await run.status() == status:
                return
            await anyio.sleep(0.01)


async def test_each_node_lists_every_run(nodes: tuple[af.Runtime, af.Runtime]) -> None:
    a, b = nodes
    on_a = [await a.start(fails) for _ in range(3)]
    on_b = [await b.start(waits, f"b{i}") for i in range(2)]
    for run in on_a:
        await _settled(a, run, "failed")
    for run in on_b:
        await _settled(b, run, "running")
    for rt in (a, b):
        page = await rt.list_runs()
        everything = [r.run_id for r in page.items]
        assert everything == sorted((r.run_id for r in on_a + on_b), reverse=True)
        failed = await rt.list_runs(status="failed")
        assert [r.run_id for r in failed.items] == [r.run_id for r in reversed(on_a)]
        named = await rt.list_runs(workflow="waits", status="running")
        assert {r.run_id for r in named.items} == {r.run_id for r in on_b}
        summary = next(r for r in page.items if r.run_id == on_a[0].run_id)
        assert summary.workflow_name == "fails" and summary.status == "failed"
        assert summary.created_at <= summary.started_at <= summary.completed_at  # type: ignore[operator]
    # Pages, while both nodes start more runs: each run once, none skipped.
    seen: list[str] = []
    cursor = None
    while True:
        page = await a.list_runs(limit=2, cursor=cursor)
        seen.extend(r.run_id for r in page.items)
        await a.start(fails)
        await b.start(fails)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == everything


async def test_hooks_events_and_info_across_nodes(nodes: tuple[af.Runtime, af.Runtime]) -> None:
    a, b = nodes
    run = await b.start(waits, "x")
    napping = await b.start(sleeps)
    await wait_until(lambda: "pg:x" in b.state.tokens)
    await _settled(b, napping, "running")
    # Node b's fold has the hook at once; the shared table once b's append commits.
    await b.wait_idle()
    hooks = await a.list_hooks()
    assert [(h.token, h.run_id, h.kind) for h in hooks.items] == [("pg:x", run.run_id, "hook")]
    assert hooks.items[0].buffered is None  # owned by node b: only b knows
    assert (await b.list_hooks()).items[0].buffered == 0
    assert [h.token for h in (await a.list_hooks(run.run_id)).items] == ["pg:x"]
    info = await a.get_run(run.run_id).info()
    assert [h.token for h in info.waiting_on.hooks] == ["pg:x"]
    nap = await a.get_run(napping.run_id).info()
    assert len(nap.waiting_on.sleeps) == 1
    await a.resume_hook("pg:x", {"v": 1})
    assert await a.get_run(run.run_id).result(timeout=20) == "{'v': 1}"
    timeline = await a.list_events(run.run_id)
    types = [e.type for e in timeline.items]
    assert types[0] == "run_created" and types[-1] == "run_completed"
    received = next(e for e in timeline.items if e.type == "hook_received")
    assert received.data["payload"] == {"v": 1}
    tail = await a.list_events(run.run_id, after=len(types) - 1, limit=5)
    assert [e.type for e in tail.items] == ["run_completed"] and tail.next_cursor is None
    assert (await a.list_hooks()).items == ()


async def test_bad_queries_and_unknown_runs(nodes: tuple[af.Runtime, af.Runtime]) -> None:
    a, _ = nodes
    with pytest.raises(af.InvalidQueryError):
        await a.list_runs(cursor="wrun_bad")
    with pytest.raises(af.InvalidQueryError):
        await a.list_runs(status="gone")
    with pytest.raises(af.WorkflowRunNotFoundError):
        await a.list_events("wrun_" + "0" * 32)
    with pytest.raises(af.WorkflowRunNotFoundError):
        await a.list_hooks("wrun_" + "0" * 32)


async def test_routes_on_postgres(nodes: tuple[af.Runtime, af.Runtime], served: Any) -> None:
    a, b = nodes
    run = await b.start(fails)
    await _settled(b, run, "failed")
    async with served(a) as client:
        listed = await client.get(f"{PREFIX}/runs", params={"status": "failed"}, headers=AUTH)
        assert [r["run_id"] for r in listed.json()["items"]] == [run.run_id]
        events = await client.get(f"{PREFIX}/runs/{run.run_id}/events", headers=AUTH)
        assert events.json()["items"][-1]["type"] == "run_failed"
        assert (await client.get(f"{PREFIX}/hooks", headers=AUTH)).json()["items"] == []
        bad = await client.get(f"{PREFIX}/runs", params={"limit": "0"}, headers=AUTH)
        assert bad.status_code == 400
        missing = await client.get(f"{PREFIX}/runs/wrun_nope/events", headers=AUTH)
        assert missing.status_code == 404
        shown = (await client.get(f"{PREFIX}/runs/{run.run_id}", headers=AUTH)).json()
        assert shown["workflow_name"] == "fails" and shown["completed_at"] is not None


async def _cli(*args: str) -> Any:
    command = [sys.executable, "-c", "import sys; from actorflow.cli import main; sys.exit(main())"]
    return await anyio.run_process([*command, *args], check=False, env=dict(os.environ))


async def test_the_cli_on_a_store(pg_database: Database, pg_schema: str, tmp_path: Path) -> None:
    store = ["--store", pg_database.url, "--schema", pg_schema]
    async with af.Runtime(tmp_path / "n", WORKFLOWS, store=pg_database.url, schema=pg_schema,
                          durability="none") as rt:  # fmt: skip
        failed = await rt.start(fails)
        waiting = await rt.start(waits, "cli")
        await _settled(rt, failed, "failed")
        await wait_until(lambda: "pg:cli" in rt.state.tokens)
        await rt.wait_idle()
        listed = await _cli("runs", "list", *store, "--json")
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.decode().splitlines()]
        assert [r["run_id"] for r in rows] == [waiting.run_id, failed.run_id]
        hooks = await _cli("hooks", "list", *store)
        assert b"pg:cli" in hooks.stdout and b"TOKEN" in hooks.stdout
        shown = await _cli("runs", "show", waiting.run_id, *store, "--json")
        assert json.loads(shown.stdout)["waiting_on"]["hooks"][0]["token"] == "pg:cli"
        events = await _cli("events", failed.run_id, *store)
        assert b"run_failed" in events.stdout
        # A write joins the schema as a node for the call; the owner gets it via its inbox.
        resumed = await _cli("hooks", "resume", "pg:cli", "--payload", "1", *store)
        assert resumed.returncode == 0, resumed.stderr
        assert await waiting.result(timeout=20) == "1"
        missing = await _cli("runs", "show", "wrun_missing", *store)
        assert missing.returncode == 1 and b"wrun_missing" in missing.stderr


async def test_a_version_2_schema_gets_its_listing_columns_filled(
    pg_database: Database, pg_schema: str, tmp_path: Path
) -> None:
    async with af.Runtime(tmp_path / "old", WORKFLOWS, store=pg_database.url, schema=pg_schema,
                          durability="none") as rt:  # fmt: skip
        failed = await rt.start(fails)
        waiting = await rt.start(waits, "old")
        await _settled(rt, failed, "failed")
        await wait_until(lambda: "pg:old" in rt.state.tokens)
        before = [(r.run_id, r.status, r.created_at, r.started_at, r.completed_at)
                  for r in (await rt.list_runs()).items]  # fmt: skip
    # Back to what schema version 2 had: no listing columns, no listing indexes, and none of
    # version 4's retention column and indexes either (its indexes go with the column), nor
    # version 5's peer columns and secret.
    runs = sql.Identifier(pg_schema, "runs")
    pg_database.run(
        sql.SQL(
            "ALTER TABLE {} DROP COLUMN created, DROP COLUMN started, DROP COLUMN ended, "
            "DROP COLUMN version, DROP COLUMN ended_at"
        ).format(runs)
    )
    pg_database.run(
        sql.SQL("DROP INDEX {}").format(sql.Identifier(pg_schema, "delivery_keys_event"))
    )
    for index in ("runs_status_listing", "runs_workflow_listing"):
        pg_database.run(sql.SQL("DROP INDEX {}").format(sql.Identifier(pg_schema, index)))
    for table, column in (("nodes", "peer"), ("inbox", "forwarded")):
        pg_database.run(
            sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(
                sql.Identifier(pg_schema, table), sql.Identifier(column)
            )
        )
    pg_database.run(sql.SQL("DROP TABLE {}").format(sql.Identifier(pg_schema, "peer_secret")))
    pg_database.run(
        sql.SQL("DELETE FROM {} WHERE version >= 3").format(
            sql.Identifier(pg_schema, "schema_version")
        )
    )
    async with af.Runtime(tmp_path / "new", WORKFLOWS, store=pg_database.url, schema=pg_schema,
                          durability="none") as rt:  # fmt: skip
        after = [(r.run_id, r.status, r.created_at, r.started_at, r.completed_at)
                 for r in (await rt.list_runs()).items]  # fmt: skip
        assert after == before
        assert [r.run_id for r in (await rt.list_runs(status="running")).items] == [waiting.run_id]
    indexes = {
        row[0]
        for row in pg_database.query(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (pg_schema,)
        )
    }
    assert {"runs_status_listing", "runs_workflow_listing"} <= indexes
