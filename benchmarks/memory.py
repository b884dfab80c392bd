"""Scenario "memory": RSS per suspended run, resident and passivated, against an empty runtime.

Each variant runs in a fresh interpreter (``child.py``) so its heap starts clean. In it: open an
empty runtime and read RSS (the baseline, same process); start N runs of ``hook_once`` and wait
until each is suspended on its hook with everything written; then read RSS again. Per run =
(loaded - empty) / N.

- *resident*: ``passivate_after=inf``; every run keeps its live machine (its coroutine frame).
- *passivated*: ``passivate_after=0``; machines are dropped once idle, leaving the run's state,
  its hook in the token index and its log positions.
- *passivated, encrypted*: the same with encryption at rest on, which adds each run's cached
  cipher (its derived key, the envelope's prefixes, the compiled sealer).

RSS is read twice: as is, and after ``gc.collect()`` + glibc ``malloc_trim(0)``, which returns
memory freed after the start-up burst (transient batches, buffers) to the OS. The trimmed figure
is the headline: it is what the suspended runs hold. The log is written with
``durability="none"`` (labelled) to build it fast; fsync does not change what stays in memory.
"""

from __future__ import annotations

import math
import os
from typing import Any

import anyio

import actorflow as af

from .child import run_child
from .scenario import Config, ScenarioResult
from .stats import malloc_trim, rss_bytes

NAME = "memory"
TITLE = "memory per suspended run"

_TARGETS = {"resident": 16 * 1024, "passivated": 2 * 1024}
#: The encrypted variant has no target of its own: it is read against the plain passivated run.
_VARIANTS = ("resident", "passivated", "passivated, encrypted")


def measure(variant: str, n: int, work_dir: str, backend: str, concurrency: int) -> dict[str, Any]:
    """Child entry point: the RSS readings of one variant."""
    return anyio.run(_measure, variant, n, work_dir, concurrency, backend=backend)


async def _measure(variant: str, n: int, work_dir: str, concurrency: int) -> dict[str, Any]:
    from pathlib import Path

    from .progress import Progress
    from .roundtrip import wait_for_hook
    from .workflows import hook_once

    passivated = variant.startswith("passivated")
    passivate = 0.0 if passivated else math.inf
    key = os.urandom(32) if variant.endswith("encrypted") else None
    out: dict[str, Any] = {"variant": variant, "runs": n}
    async with af.Runtime(Path(work_dir) / variant.replace(", ", "-"), workflows=[hook_once],
                          durability="none", passivate_after=passivate,
                          max_resident=max(n + 1, 100_000), encryption_key=key) as rt:  # fmt: skip
        await rt.wait_idle()
        malloc_trim()
        out["empty_rss"] = rss_bytes()
        meter = Progress(f"memory ({variant})", n)
        pending = iter(range(n))

        async def starter() -> None:
            for i in pending:
                await rt.start(hook_once, f"mem:{i}")
                meter.advance()

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(starter)
        meter.close()
        for i in range(n):
            await wait_for_hook(rt, f"mem:{i}")
        await rt.wait_idle()
        if passivated:
            with anyio.fail_after(60):
                while rt.supervisor.resident:  # noqa: ASYNC110 (no event to wait on)
                    await anyio.sleep(0.05)
        out["resident_actors"] = rt.supervisor.resident
        out["loaded_rss_raw"] = rss_bytes()
        out["trimmed"] = malloc_trim()
        out["loaded_rss"] = rss_bytes()
        # Prove the runs are alive and resumable after the reading.
        await rt.resume_hook("mem:0", {"k": "mem:0"})
        await rt.get_run((await rt.get_hook_by_token(f"mem:{n - 1}")).run_id).status()
    return out


def run(cfg: Config) -> ScenarioResult:
    """Both variants, each in its own interpreter."""
    n = 10_000 if cfg.quick else 100_000
    res = ScenarioResult(NAME, TITLE)
    res.params = {"runs": n, "durability": "none (log built fast; memory does not depend on it)"}
    work = cfg.scratch("memory")
    for variant in _VARIANTS:
        out = run_child("memory", "measure", 900.0, variant=variant, n=n, work_dir=str(work),
                        backend=cfg.backend, concurrency=cfg.concurrency)  # fmt: skip
        res.extra[variant] = out
        per_run = (out["loaded_rss"] - out["empty_rss"]) / n
        per_run_raw = (out["loaded_rss_raw"] - out["empty_rss"]) / n
        target = _TARGETS.get(variant)
        res.add(f"empty runtime RSS ({variant} process, baseline)", out["empty_rss"] / 2**20,
                "MiB", durability="none")  # fmt: skip
        if target is not None:
            res.add(f"RSS per run, {variant}", per_run / 1024, "KiB", per_run / target,
                    f"{target // 1024} KiB target", "<= 1", "none")  # fmt: skip
        else:
            plain = res.extra["passivated"]
            plain_per_run = (plain["loaded_rss"] - plain["empty_rss"]) / n
            res.add(f"RSS per run, {variant}", per_run / 1024, "KiB", per_run / plain_per_run,
                    "passivated, plain", durability="none")  # fmt: skip
        res.add(f"RSS per run, {variant}, before malloc_trim", per_run_raw / 1024, "KiB",
                durability="none")  # fmt: skip
        res.add(f"resident actors, {variant}", out["resident_actors"], "", durability="none")
    res.notes.append(
        "the ratio is per-run RSS over the target (<= 1 meets it); the empty runtime in the same "
        "process is subtracted"
    )
    return res
