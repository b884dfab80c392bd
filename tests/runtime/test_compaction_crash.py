"""Kill -9 at every step of a compaction (``log/compaction.py``'s ``STEPS``).

A real child process opens a log holding expired and live runs "two hours later", compacts
twice (the second pass retires what the first replaced), and SIGKILLs itself just before the
named step. The parent then opens what is left: the log must open, verify clean, and every live
run must take its next payload and end with exactly the payloads it was sent, checked by id.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import pytest
from tests.conftest import wait_for_hook
from tests.runtime.test_retention import HOUR, collect, finish_runs, runtime

from actorflow.runtime.log.compaction import STEPS
from actorflow.runtime.log.file_log import verify_log

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
LIVE = 4

CHILD = """
import os, signal, sys
import anyio
sys.path.insert(0, {root!r})
from tests.runtime.test_retention import HOUR, runtime

def crash(name):
    if name == {step!r}:
        os.kill(os.getpid(), signal.SIGKILL)

async def main():
    async with runtime(__import__("pathlib").Path({data!r}), retention="1h",
                       offset=2 * HOUR) as rt:
        rt.retention.reclaim.crash_point = crash  # the file log's SegmentReclaim
        await rt.compact()
        await rt.compact()
        await rt.compact()

anyio.run(main)
"""


@pytest.mark.parametrize("step", STEPS)
async def test_a_kill_at_every_step_of_a_compaction_loses_nothing(
    tmp_path: Path, step: str
) -> None:
    async with runtime(tmp_path, retention="1h") as rt:
        await finish_runs(rt, 25, "old")
        live = []
        for i in range(LIVE):
            live.append(await rt.start(collect, f"live-{i}"))
            await wait_for_hook(rt, f"live-{i}")
            await rt.resume_hook(f"live-{i}", {"id": f"live-{i}-before"})
        await finish_runs(rt, 25, "older")
    with anyio.fail_after(120):
        child = await anyio.run_process(
            [sys.executable, "-c", CHILD.format(root=str(ROOT), step=step, data=str(tmp_path))],
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:].decode()
    assert [p for p in verify_log(tmp_path / "log") if p.kind != "torn_tail"] == []
    async with runtime(tmp_path, retention="1h", offset=2 * HOUR) as rt:
        for i, run in enumerate(live):
            await wait_for_hook(rt, f"live-{i}")
            await rt.resume_hook(f"live-{i}", {"id": f"live-{i}-after"})
            await rt.resume_hook(f"live-{i}", "stop")
            assert await rt.get_run(run.run_id).result() == [
                {"id": f"live-{i}-before"},
                {"id": f"live-{i}-after"},
            ]
        await rt.compact()  # and a later compaction finishes the job
    assert verify_log(tmp_path / "log") == []
    names = [p.name for p in (tmp_path / "log").iterdir()]
    assert not [n for n in names if n.endswith(".tmp")]
