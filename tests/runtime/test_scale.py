"""10,000 runs suspended on hooks at once, all resumed, all complete (on asyncio and on trio).

Durability is real (fsync): starts and resumes are issued concurrently, so group commit shares
fsyncs among appends. How long it takes and how many appends an fsync carries depend on the
machine and its load: those are figures of the "scale" benchmark (``python -m benchmarks --only
scale``), not assertions here.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from tests.conftest import wait_until

import actorflow as af

pytestmark = pytest.mark.anyio

RUNS = 10_000


@af.workflow
async def waiter(i: int) -> int:
    payload = await af.create_hook(token=f"bulk:{i}")
    return int(payload) + i


async def test_ten_thousand_suspended_runs(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[waiter], passivate_after=float("inf")) as rt:
        runs: list[af.Run] = [None] * RUNS  # type: ignore[list-item]

        async def start(i: int) -> None:
            runs[i] = await rt.start(waiter, i)

        async def resume(i: int) -> None:
            await rt.resume_hook(f"bulk:{i}", 1)

        async with anyio.create_task_group() as tg:
            for i in range(RUNS):
                tg.start_soon(start, i)
        await wait_until(lambda: len(rt.state.tokens) == RUNS)
        assert all([await run.status() == "running" for run in runs])  # all suspended at once
        async with anyio.create_task_group() as tg:
            for i in range(RUNS):
                tg.start_soon(resume, i)
        results = [await run.result() for run in runs]
        assert results == [i + 1 for i in range(RUNS)]
        assert rt.state.tokens == {}
        writer = rt.journal.writer
        assert writer.syncs < writer.appended  # group commit shared fsyncs


async def test_thousands_of_suspended_runs_survive_a_restart(tmp_path: Path) -> None:
    """Recovery at scale: every run is rebuilt from the log on its first message."""
    count = 2_000
    async with af.Runtime(tmp_path, workflows=[waiter]) as rt:
        runs: list[af.Run] = [None] * count  # type: ignore[list-item]

        async def start(i: int) -> None:
            runs[i] = await rt.start(waiter, i)

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(start, i)
        await wait_until(lambda: len(rt.state.tokens) == count)
    async with af.Runtime(tmp_path, workflows=[waiter]) as rt:
        assert len(rt.state.tokens) == count  # the token index is rebuilt from the log

        async def resume(i: int) -> None:
            await rt.resume_hook(f"bulk:{i}", 2)

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(resume, i)
        results = [await rt.get_run(run.run_id).result() for run in runs]
    assert results == [i + 2 for i in range(count)]
