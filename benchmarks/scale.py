"""Scenario "scale": 10,000 runs suspended on hooks at once, then all resumed, fsync on.

The timing and batching half of ``tests/runtime/test_scale.py`` (the test keeps what must hold
on any machine: every run suspends, every run completes with what it was sent, fsyncs are fewer
than appends). Starts and resumes are issued concurrently, so group commit can share each fsync
among many appends: the figures are the wall time of the whole (target: under 30 s, as the
test once required) and the events per fsync (target: at least 10, as it also required), next
to one fsync of the same disk measured in the same run.
"""

from __future__ import annotations

import time

import anyio

import actorflow as af

from .disk import fsync_latencies
from .scenario import Config, ScenarioResult
from .stats import percentile

NAME = "scale"
TITLE = "10,000 suspended runs, all resumed"


@af.workflow(name="bench_scale_waiter")
async def waiter(i: int) -> int:
    payload = await af.create_hook(token=f"bulk:{i}")
    return int(payload) + i


async def _measure(cfg: Config, runs: int) -> dict[str, float]:
    data = cfg.scratch("scale") / "data"
    began = time.perf_counter()
    async with af.Runtime(data, workflows=[waiter], passivate_after=float("inf")) as rt:
        handles: list[af.Run] = []

        async def start(i: int) -> None:
            handles.append(await rt.start(waiter, i))

        async def resume(i: int) -> None:
            await rt.resume_hook(f"bulk:{i}", 1)

        async with anyio.create_task_group() as tg:
            for i in range(runs):
                tg.start_soon(start, i)
        for _ in range(60_000):  # until every run is suspended on its hook (at most 10 min)
            if len(rt.state.tokens) == runs:
                break
            await anyio.sleep(0.01)
        else:
            raise RuntimeError(f"only {len(rt.state.tokens)} of {runs} runs suspended")
        suspended = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(runs):
                tg.start_soon(resume, i)
        for run in handles:
            await run.result(timeout=600)
        ended = time.perf_counter()
        return {
            "seconds": ended - began,
            "start_seconds": suspended - began,
            "resume_seconds": ended - suspended,
            "appended": rt.journal.writer.appended,
            "syncs": rt.journal.writer.syncs,
        }


def run(cfg: Config) -> ScenarioResult:
    """Start, suspend, resume and complete the runs; time it and count fsyncs."""
    runs = 2_000 if cfg.quick else 10_000
    res = ScenarioResult(NAME, TITLE)
    res.params = {"runs": runs}
    fs = fsync_latencies(cfg.scratch("scale-fsync-baseline"), 300)
    m = anyio.run(_measure, cfg, runs, backend=cfg.backend)
    f50 = percentile(fs, 50)
    per_sync = m["appended"] / m["syncs"] if m["syncs"] else float("nan")
    res.add("fsync p50 (baseline)", f50 * 1000.0, "ms", durability="fsync")
    res.add(f"{runs:,} runs started, suspended, resumed, completed", m["seconds"], "s",
            target="<= 30" if runs == 10_000 else None, durability="fsync",
            check="value")  # fmt: skip
    res.add("starts until all suspended", m["start_seconds"], "s", durability="fsync")
    res.add("resumes until all completed", m["resume_seconds"], "s", durability="fsync")
    res.add("events per fsync (group commit)", per_sync, "", target=">= 10",
            durability="fsync", check="value")  # fmt: skip
    res.extra = m
    return res
