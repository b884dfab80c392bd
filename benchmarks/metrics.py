"""Scenario "metrics": what the Prometheus metrics cost a resume.

Two runtimes in one process, each with one run iterating over a hook. On one, resumes go
through ``Runtime.resume_hook`` with the metrics attached (the outcome counter, the latency
histogram, the durable-event counts and the sync histogram); on the other, the metrics'
callbacks are detached from the journal before it opens and resumes call ``Front.resume_hook``
directly, which is the path a resume took before the metrics existed. Serial resumes alternate
in blocks between the two, so drift in the machine's speed hits both alike; the figure is the
ratio of the median resume with metrics to the median without.

Measured with ``durability="none"`` (the worst case for the ratio: a resume then costs only
CPU, which is all the metrics add; it carries the target) and with fsync (what a deployment
sees; on a shared machine the fsyncs' own spread is larger than the difference).
"""

from __future__ import annotations

import time
from typing import Any

import anyio

import actorflow as af

from .roundtrip import wait_for_hook
from .scenario import Config, ScenarioResult
from .stats import percentile

NAME = "metrics"
TITLE = "Prometheus metrics: a resume with them vs without (same process)"


@af.workflow
async def drain() -> int:
    count = 0
    async for _ in af.create_hook(token="metrics-bench"):
        count += 1
    return count


async def _block(resume: Any, start: int, n: int) -> list[float]:
    out = []
    for i in range(start, start + n):
        began = time.perf_counter()
        await resume("metrics-bench", i)
        out.append(time.perf_counter() - began)
    return out


async def _measure(cfg: Config, durability: str, blocks: int, per_block: int) -> tuple[
    list[float], list[float]]:  # fmt: skip
    data = cfg.scratch(f"metrics-{durability}")
    options: dict[str, Any] = {"durability": durability, "mailbox_size": 1_000_000}
    async with (
        af.Runtime(data / "with", [drain], **options) as measured,
        af.Runtime(data / "without", [drain], **options) as bare,
    ):
        # Detach the metrics from the bare runtime's journal: it was opened already, so its
        # writer holds the sync callback; take it off there too.
        bare.journal.on_durable_batch = lambda events: None
        bare.journal.writer._on_sync = None  # noqa: SLF001 (the benchmark's switch)
        for rt in (measured, bare):
            await rt.start(drain)
            await wait_for_hook(rt, "metrics-bench")
        with_metrics: list[float] = []
        without: list[float] = []
        for b in range(blocks):
            start = b * per_block
            # Alternate which goes first, so neither always follows the other's writes.
            if b % 2:
                without += await _block(bare.front.resume_hook, start, per_block)
                with_metrics += await _block(measured.resume_hook, start, per_block)
            else:
                with_metrics += await _block(measured.resume_hook, start, per_block)
                without += await _block(bare.front.resume_hook, start, per_block)
        await measured.wait_idle()
        await bare.wait_idle()
    return with_metrics, without


def run(cfg: Config) -> ScenarioResult:
    """Resumes with and without metrics, alternating, at both durabilities."""
    blocks, per_block = (60, 50) if cfg.quick else (200, 200)
    res = ScenarioResult(NAME, TITLE)
    res.params = {"blocks": blocks, "resumes_per_block": per_block, "serial": True}
    # With fsync the two runtimes' fsyncs on one shared disk swing either way by more than the
    # metrics cost, so that ratio is shown without a target; the CPU-only one carries it.
    for durability, target in (("none", "<= 1.1"), ("fsync", None)):
        with_metrics, without = anyio.run(
            _measure, cfg, durability, blocks, per_block, backend=cfg.backend
        )
        base, subject = percentile(without, 50), percentile(with_metrics, 50)
        res.add("resume p50 without metrics (baseline)", base * 1e6, "us",
                durability=durability)  # fmt: skip
        res.add("resume p50 with metrics", subject * 1e6, "us", subject / base,
                "without metrics", target, durability=durability)  # fmt: skip
        res.add("added per resume (p50 difference)", (subject - base) * 1e6, "us",
                durability=durability)  # fmt: skip
    res.notes.append(
        "the same process, two runtimes, serial resumes alternating in blocks; "
        "'without' calls Front.resume_hook with the journal's metric callbacks detached"
    )
    return res
