"""Scenario "steps": one workflow of 1,000 sequential no-op steps, fsync on.

Each step is two durable events (``step_started``, ``step_completed``) and a trip through the
step executor and the actor. The figure is wall time per step as a multiple of one fsync of the
same disk (the baseline, measured in the same process run). The same chain with
``durability="none"`` (labelled) shows what is left when the disk costs nothing.
"""

from __future__ import annotations

import time

import anyio

import actorflow as af

from .disk import fsync_latencies
from .scenario import Config, ScenarioResult
from .stats import percentile
from .workflows import step_chain

NAME = "steps"
TITLE = "sequential no-op steps"

STEPS = 1_000


async def _chain(cfg: Config, durability: str, steps: int) -> tuple[float, int]:
    data = cfg.scratch(f"steps-{durability}") / "data"
    async with af.Runtime(data, workflows=[step_chain], durability=durability) as rt:  # type: ignore[arg-type]
        syncs = rt.journal.writer.syncs
        began = time.perf_counter()
        run = await rt.start(step_chain, steps)
        total = await run.result(timeout=600)
        elapsed = time.perf_counter() - began
        assert total == steps * (steps - 1) // 2
        return elapsed, rt.journal.writer.syncs - syncs


def run(cfg: Config) -> ScenarioResult:
    """Time the chain with fsync, then without, against the fsync baseline."""
    reps = 1 if cfg.quick else 3
    res = ScenarioResult(NAME, TITLE)
    res.params = {"steps": STEPS, "repetitions": reps}
    base_dir = cfg.scratch("steps-fsync-baseline")
    fs = fsync_latencies(base_dir, 300)
    timings: dict[str, list[float]] = {"fsync": [], "none": []}
    syncs = 0
    meter = cfg.meter("steps", 2 * reps)
    for _ in range(reps):
        for durability in ("fsync", "none"):
            elapsed, n_syncs = anyio.run(_chain, cfg, durability, STEPS, backend=cfg.backend)
            timings[durability].append(elapsed)
            if durability == "fsync":
                syncs = n_syncs
            meter.advance()
    meter.close()
    fs += fsync_latencies(base_dir, 300)
    f50 = percentile(fs, 50)
    ms = 1000.0
    per_step = min(timings["fsync"]) / STEPS
    per_step_none = min(timings["none"]) / STEPS
    res.add("fsync p50 (baseline)", f50 * ms, "ms", durability="fsync")
    res.add("time per step", per_step * ms, "ms", per_step / f50, "fsync p50",
            durability="fsync")  # fmt: skip
    res.add("fsyncs per step", syncs / STEPS, "", durability="fsync")
    res.add("time per step, no fsync", per_step_none * ms, "ms", per_step_none / f50,
            "fsync p50", durability="none")  # fmt: skip
    res.add("steps/s", 1.0 / per_step, "/s", durability="fsync")
    res.extra = {"seconds_fsync": timings["fsync"], "seconds_none": timings["none"],
                 "fsyncs_per_step": syncs / STEPS}  # fmt: skip
    res.notes.append('the "no fsync" row runs with durability="none": not durable, for comparison')
    return res
