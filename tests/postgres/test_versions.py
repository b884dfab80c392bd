"""Blue/green on one PostgreSQL schema: nodes of two versions (issue 17).

Each node claims only runs of its own version; a delivery to any run through either node is
answered, and a read of any run from either node too; a node of the old version that stops hands
its runs to no node of the new version, and a third node of the old version takes them. Every
payload is checked by its id: each one acknowledged is in its run's result exactly once.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from tests.postgres.conftest import Database, require_psycopg

require_psycopg()

from tests.postgres.test_cluster import Nodes, hook_of  # noqa: E402

import actorflow as af  # noqa: E402
from actorflow.runtime.cluster import SharedOwnership  # noqa: E402
from actorflow.runtime.log.postgres_cluster import ClusterLog  # noqa: E402

pytestmark = pytest.mark.anyio


@af.workflow(name="versions_collect")
async def collect_two(tag: str) -> list[Any]:
    hook = af.create_hook(token=f"ver:{tag}")
    return [await hook, await hook]


def nodes_of(db: Database, schema: str, tmp_path: Path, stack: AsyncExitStack, first: int) -> Nodes:
    nodes = Nodes(db, schema, tmp_path, stack)
    nodes.count = first
    return nodes


async def node(nodes: Nodes, version: str) -> af.Runtime:
    nodes.count += 1
    name = f"{version}-node{nodes.count}"
    rt = af.Runtime(
        nodes.tmp_path / name,
        [collect_two],
        store=ClusterLog(
            nodes.db.dsn, node_id=name, schema=nodes.schema, durability="none", lease_seconds=1.5
        ),  # fmt: skip
        poll_interval=0.05,
        version=version,
    )
    return await nodes.stack.enter_async_context(rt)


async def test_two_versions_share_one_schema_and_old_runs_wait_for_an_old_node(
    pg_database: Database, pg_schema: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as outer:
        # The new version first: runtimes nest like task groups, and the old one stops first.
        green_nodes = nodes_of(pg_database, pg_schema, tmp_path, outer, 0)
        green = await node(green_nodes, "v2")
        async with AsyncExitStack() as inner:
            blue = await node(nodes_of(pg_database, pg_schema, tmp_path, inner, 10), "v1")
            old = await blue.start(collect_two, "old")
            new = await green.start(collect_two, "new")
            await hook_of(green, "ver:old")
            await hook_of(blue, "ver:new")
            assert green_nodes.owner(old.run_id) == "v1-node11"
            assert green_nodes.owner(new.run_id) == "v2-node1"
            # Each through the other node: routed to the owner, answered once in the history.
            await green.resume_hook("ver:old", {"id": "old-1"})
            await blue.resume_hook("ver:new", {"id": "new-1"})
            await blue.resume_hook("ver:new", {"id": "new-2"})
            assert await blue.get_run(new.run_id).result(timeout=20) == [
                {"id": "new-1"}, {"id": "new-2"},
            ]  # fmt: skip
            assert await green.get_run(old.run_id).status() == "running"
        # The old node stopped and gave its runs back: the new node takes none of them.
        assert isinstance(green.ownership, SharedOwnership)
        assert await green.ownership.take_over() == 0
        assert green_nodes.owner(old.run_id) is None
        assert old.run_id not in green.state.runs
        assert await green.get_run(old.run_id).status() == "running"  # still readable
        # A delivery to it is not lost: no node takes it within a lease, so it is withdrawn
        # and answered "retry later" (503), with nothing delivered.
        with pytest.raises(af.OverloadedError):
            await green.resume_hook("ver:old", {"id": "unheard"})
        assert green_nodes.count_events(old.run_id, "hook_received") == 1
        async with AsyncExitStack() as third:
            blue2 = await node(nodes_of(pg_database, pg_schema, tmp_path, third, 20), "v1")
            assert old.run_id in blue2.state.runs  # claimed at its start
            assert green_nodes.owner(old.run_id) == "v1-node21"
            await green.resume_hook("ver:old", {"id": "old-2"})
            assert await green.get_run(old.run_id).result(timeout=20) == [
                {"id": "old-1"}, {"id": "old-2"},
            ]  # fmt: skip
        assert green_nodes.count_events(old.run_id, "hook_received") == 2
        assert green_nodes.count_events(new.run_id, "hook_received") == 2
        assert green_nodes.count_events(old.run_id, "run_parked") == 0


async def test_an_unversioned_node_takes_runs_of_every_version(
    pg_database: Database, pg_schema: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as outer:
        anyone = await Nodes(pg_database, pg_schema, tmp_path, outer).node(lease=1.5)
        anyone.register(collect_two)
        async with AsyncExitStack() as inner:
            blue = await node(nodes_of(pg_database, pg_schema, tmp_path, inner, 10), "v1")
            run = await blue.start(collect_two, "any")
            await hook_of(blue, "ver:any")
        assert isinstance(anyone.ownership, SharedOwnership)
        assert await anyone.ownership.take_over() == 1
        await anyone.resume_hook("ver:any", 1)
        await anyone.resume_hook("ver:any", 2)
        assert await anyone.get_run(run.run_id).result(timeout=20) == [1, 2]


async def test_a_store_made_for_another_version_is_refused(
    pg_database: Database, pg_schema: str, tmp_path: Path
) -> None:
    store = ClusterLog(pg_database.dsn, node_id="x", schema=pg_schema, version="v1")
    with pytest.raises(af.WorkflowDefinitionError, match="version"):
        async with af.Runtime(tmp_path, [collect_two], store=store, version="v2"):
            pass
