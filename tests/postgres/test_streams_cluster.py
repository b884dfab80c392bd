"""Streams read on a node that does not own the run (PostgreSQL): NOTIFY-woken, polled too.

Two runtimes on one schema in one test process, each a node with its own connections and state.
The reader's node folds nothing of the run: it reads the ``events`` table. Chunks are checked
by id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.conftest import wait_until
from tests.postgres.conftest import Database, require_psycopg

require_psycopg()

import actorflow as af  # noqa: E402
from actorflow.runtime.log.postgres_cluster import ClusterLog  # noqa: E402

pytestmark = pytest.mark.anyio


@af.workflow
async def ticker(count: int) -> str:
    """Writes a chunk per payload of ``tick:<count>``; closes ``ticks`` at the end."""
    out = af.get_writable("ticks")
    hook = af.create_hook(token=f"tick:{count}")
    for _ in range(count):
        payload = await hook
        await out.write({"id": payload})
    await out.close()
    await af.sleep("7d")
    return "woke"


@pytest.fixture
async def pair(pg_database: Database, pg_schema: str, tmp_path: Path) -> AsyncIterator[Any]:
    async with AsyncExitStack() as stack:
        nodes = []
        for name in ("owner", "reader"):
            # poll_interval is long: a reader that keeps up is woken by NOTIFY, not by the poll.
            store = ClusterLog(pg_database.dsn, node_id=name, schema=pg_schema)
            rt = af.Runtime(tmp_path / name, [ticker], store=store, poll_interval=30.0)
            nodes.append(await stack.enter_async_context(rt))
        yield nodes


async def test_a_reader_on_another_node_follows_the_stream(pair: Any) -> None:
    owner, reader = pair
    run = await owner.start(ticker, 40)
    assert run.run_id not in reader.state.runs
    remote = reader.get_run(run.run_id)
    got: list[Any] = []
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:

            async def follow() -> None:
                async for chunk in remote.readable("ticks"):
                    got.append(chunk["id"])

            tg.start_soon(follow)
            for i in range(40):
                await wait_until(lambda: "tick:40" in owner.state.tokens)
                await owner.resume_hook("tick:40", f"c{i}")
                if i % 10 == 9:
                    # The reader keeps up: woken by NOTIFY (the poll interval is 30 s).
                    await wait_until(lambda: len(got) >= i + 1)  # noqa: B023
    assert got == [f"c{i}" for i in range(40)]
    assert await remote.list_streams() == ["ticks"]
    resumed = [c["id"] async for c in remote.readable("ticks", start_index=37)]
    assert resumed == ["c37", "c38", "c39"]
    # wake_up from the other node goes through the inbox to the owner.
    with anyio.fail_after(20):
        woken: list[str] = []
        while not woken:
            woken = await remote.wake_up()
            await anyio.sleep(0.05)  # the sleep's wait_created may be on its way  # noqa: ASYNC110
        assert await run.result() == "woke"
    with pytest.raises(af.WorkflowRunNotFoundError):
        [c async for c in reader.get_run("wrun_nope").readable()]
    with pytest.raises(af.WorkflowRunNotFoundError):
        await reader.get_run("wrun_nope").wake_up()
