"""Scenario "retention": memory, time to ready and disk after compaction are flat in history.

1. *Build* (child interpreter, ``durability="none"``, labelled: only to build it fast):
   - the history log: N finished runs of ``take_one`` (create a hook, take one payload, return:
     the issue's "finished run"), then 1,000 live runs waiting on their hooks. The finished runs
     are copies of one real run's records with a new run id each (same bytes otherwise), so that
     a million of them take seconds rather than a million round trips;
   - the baseline log: the same 1,000 live runs only.
2. *Compact* (a child): open the history log with ``retention="1s"`` once its runs ended more
   than a second ago (every finished run expires at open), ``await rt.compact()``, close.
3. *Open* (a fresh child each, best of two): RSS after ``async with Runtime(...)`` is entered,
   and the time until then, on the compacted log and on the baseline log; and both logs' size
   on disk. Targets (issue "Day thirty"): memory <= 1.2x, time to ready <= 1.5x, disk <= 1.5x.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio

import actorflow as af
from actorflow.runtime.log.compaction import run_id_of
from actorflow.runtime.log.file_log import FileLog

from .child import run_child
from .scenario import Config, ScenarioResult
from .stats import rss_bytes

NAME = "retention"
TITLE = "retention: open a compacted log of many expired runs (1,000,000; --quick 20,000)"

LIVE = 1000


@af.workflow(name="bench-take-one")
async def take_one(token: str) -> Any:
    return await af.create_hook(token=token)


async def _live_runs(data: Path, prefix: str) -> None:
    from .roundtrip import wait_for_hook

    async with af.Runtime(data, workflows=[take_one], durability="none") as rt:
        for i in range(LIVE):
            await rt.start(take_one, f"{prefix}:{i}")
        for i in range(LIVE):
            await wait_for_hook(rt, f"{prefix}:{i}", timeout=120)
        await rt.wait_idle()


async def _template(data: Path) -> list[bytes]:
    from .roundtrip import wait_for_hook

    async with af.Runtime(data, workflows=[take_one], durability="none") as rt:
        run = await rt.start(take_one, "template")
        await wait_for_hook(rt, "template")
        await rt.resume_hook("template", {"n": 1})
        await run.result()
        await rt.wait_idle()
    log = FileLog(data / "log", durability="none")
    try:
        return [record for _, record in log.scan()]
    finally:
        log.close()


def build(n: int, work_dir: str, backend: str) -> dict[str, Any]:
    """Child entry point: write the history log and the baseline log."""
    return anyio.run(_build, n, Path(work_dir), backend=backend)


async def _build(n: int, work: Path) -> dict[str, Any]:
    began = time.perf_counter()
    template = await _template(work / "template")
    old = run_id_of(template[0]).encode()
    log = FileLog(work / "history" / "log", durability="none")
    try:
        assert list(log.scan()) == []
        batch: list[bytes] = []
        for i in range(n):
            new = b"wrun_%032x" % (i + 1)
            batch.extend(record.replace(old, new) for record in template)
            if len(batch) >= 6000:
                log.append(batch)
                batch = []
        if batch:
            log.append(batch)
    finally:
        log.close()
    await _live_runs(work / "history", "live")
    await _live_runs(work / "baseline", "live")
    return {"runs": n, "events_per_run": len(template), "seconds": time.perf_counter() - began}


def compact(work_dir: str, backend: str) -> dict[str, Any]:
    """Child entry point: expire every finished run of the history log and compact it."""
    return anyio.run(_compact, Path(work_dir), backend=backend)


async def _compact(data: Path) -> dict[str, Any]:
    await anyio.sleep(1.1)  # the finished runs ended over a second ago: retention="1s" expires them
    began = time.perf_counter()
    async with af.Runtime(data, workflows=[take_one], retention="1s") as rt:
        opened = time.perf_counter() - began
        report = await rt.compact()
    return {"open_seconds": opened, "expired": rt.retention_status().expired_runs,
            "bytes_before": report.bytes_before, "bytes_after": report.bytes_after,
            "compact_seconds": report.seconds}  # fmt: skip


def measure(data_dir: str, backend: str) -> dict[str, Any]:
    """Child entry point: RSS and time until a runtime on ``data_dir`` is ready."""
    return anyio.run(_measure, Path(data_dir), backend=backend)


async def _measure(data: Path) -> dict[str, Any]:
    before = rss_bytes()
    began = time.perf_counter()
    async with af.Runtime(data, workflows=[take_one], retention="1s") as rt:
        ready = time.perf_counter() - began
        after = rss_bytes()
        runs = len(rt.state.runs)
    return {"ready_seconds": ready, "rss_before": before, "rss_after": after, "runs": runs}


def _disk(data: Path) -> int:
    return sum(p.stat().st_size for p in (data / "log").glob("*.log"))


def run(cfg: Config) -> ScenarioResult:
    n = 20_000 if cfg.quick else 1_000_000
    res = ScenarioResult(NAME, TITLE)
    work = cfg.scratch("retention")
    built = run_child("retention", "build", 3600.0, n=n, work_dir=str(work), backend=cfg.backend)
    before_disk = _disk(work / "history")
    done = run_child("retention", "compact", 3600.0, work_dir=str(work / "history"),
                     backend=cfg.backend)  # fmt: skip
    best: dict[str, dict[str, Any]] = {}
    for _ in range(2):
        for name in ("history", "baseline"):
            m = run_child("retention", "measure", 600.0, data_dir=str(work / name),
                          backend=cfg.backend)  # fmt: skip
            if name not in best or m["ready_seconds"] < best[name]["ready_seconds"]:
                best[name] = m
    h, b = best["history"], best["baseline"]
    res.params = {"expired_runs": n, "live_runs": LIVE, "events_per_run": built["events_per_run"],
                  "build": 'durability="none" (to build it fast)', "open": 'durability="fsync"'}  # fmt: skip
    res.extra = {"build": built, "compact": done, "measure": best}
    res.add("log before compaction", before_disk / 1e6, "MB")
    res.add("open of that log (recovery; expiry; a background pass starts)",
            done["open_seconds"], "s")  # fmt: skip
    res.add("rt.compact() right after, with the background pass", done["compact_seconds"], "s")
    res.add("RSS after open, live-only log (baseline)", b["rss_after"] / 2**20, "MiB")
    res.add("RSS after open, compacted log", h["rss_after"] / 2**20, "MiB",
            h["rss_after"] / b["rss_after"], "live-only log", "<= 1.2")  # fmt: skip
    res.add("time to ready, live-only log (baseline)", b["ready_seconds"] * 1000, "ms")
    res.add("time to ready, compacted log", h["ready_seconds"] * 1000, "ms",
            h["ready_seconds"] / b["ready_seconds"], "live-only log", "<= 1.5")  # fmt: skip
    res.add("disk, live-only log (baseline)", _disk(work / "baseline") / 1e6, "MB")
    res.add("disk, compacted log", _disk(work / "history") / 1e6, "MB",
            _disk(work / "history") / _disk(work / "baseline"), "live-only log", "<= 1.5")  # fmt: skip
    if done["expired"] != n or h["runs"] != LIVE:
        res.notes.append(f"expected {n} expired and {LIVE} runs left; got {done['expired']} "
                         f"expired and {h['runs']} left")  # fmt: skip
    return res
