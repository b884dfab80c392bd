"""What a background retention pass costs the runs that go on meanwhile.

    python -m benchmarks.retention_pace [--runs N] [--quick] [--json PATH]

A background pass (``Retention.run``: after runs expire) rewrites sealed segments paced to a
share of one core (``SegmentReclaim.share``, 0.25); ``rt.compact()`` is not paced. This measures
that promise on a log of N expired runs (default 200,000; ``--quick`` 20,000) and 1,000 live
runs waiting on hooks, built as ``benchmarks/retention.py`` builds its history log, copied three
times:

1. *unpaced*: open, and time the pass the expired runs start with its share set to 1.0 (what
   ``rt.compact()`` does), in that child only;
2. *background, idle*: open, and wait for the pass that the expired runs start: its wall time
   and the process's CPU time meanwhile; the CPU share is their ratio (target: the setting);
3. *background, with a resumer*: open, and resume the live runs one at a time while the pass
   runs, then the same number after it: resume p50 during the pass against after it, in the same
   process (fsync on).

Runs in child interpreters (a fresh process each, so one phase's memory does not carry over).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

import actorflow as af
from actorflow.runtime.log.file_log import FileLog

from .child import run_child
from .disk import require_disk
from .retention import LIVE, take_one

RESUMES = 400


def background(data_dir: str, backend: str, resume: bool, share: float | None) -> dict[str, Any]:
    """Child entry point: open, and time the background pass (resuming meanwhile or not).

    ``share`` replaces the pass's pacing (``1.0``: unpaced, what ``rt.compact()`` does) in this
    child only, through the one place the runtime makes its ``Reclaim``.
    """
    if share is not None:
        from actorflow.runtime import runtime as runtime_module
        from actorflow.runtime.reclaim import Readers, Reclaim, SegmentReclaim, reclaim_for
        from actorflow.runtime.state import State

        def paced(store: Any, state: State, readers: Readers) -> Reclaim:
            made = reclaim_for(store, state, readers)
            assert isinstance(made, SegmentReclaim)
            made.share = share
            return made

        runtime_module.reclaim_for = paced  # type: ignore[attr-defined]
    return anyio.run(_background, Path(data_dir), resume, backend=backend)


async def _background(data: Path, resume: bool) -> dict[str, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    async with af.Runtime(data, workflows=[take_one], retention="1s") as rt:
        opened = time.perf_counter() - wall
        cpu_open, wall_open = time.process_time(), time.perf_counter()
        during: list[float] = []
        after: list[float] = []
        next_live = 0
        with anyio.fail_after(3600):
            while rt.retention.last_pass is None:
                if resume and next_live < RESUMES:
                    during.append(await _resume(rt, next_live))
                    next_live += 1
                else:
                    await anyio.sleep(0.005)
        pass_wall = time.perf_counter() - wall_open
        pass_cpu = time.process_time() - cpu_open
        if resume:
            for _ in range(len(during)):
                after.append(await _resume(rt, next_live))
                next_live += 1
        report = rt.retention.last_pass
        assert report is not None
        return {
            "open_seconds": opened,
            "open_cpu": cpu_open - cpu,
            "pass_wall": pass_wall,
            "pass_cpu": pass_cpu,
            "pass_report_seconds": report.seconds,
            "rewritten": report.segments_rewritten,
            "share": _share(rt),
            "during_ms": [x * 1000 for x in during],
            "after_ms": [x * 1000 for x in after],
        }


async def _resume(rt: af.Runtime, i: int) -> float:
    began = time.perf_counter()
    await rt.resume_hook(f"live:{i}", {"n": i})
    return time.perf_counter() - began


def _share(rt: af.Runtime) -> float:
    return float(getattr(rt.retention.reclaim, "share", float("nan")))


def _p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, help="expired runs in the log (default 200,000)")
    parser.add_argument("--quick", action="store_true", help="20,000 expired runs")
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    runs = args.runs or (20_000 if args.quick else 200_000)
    backend = args.backend
    with tempfile.TemporaryDirectory(prefix="actorflow-pace-", dir="benchmarks/results") as tmp:
        work = Path(tmp)
        require_disk(work)
        run_child("retention", "build", 3600.0, n=runs, work_dir=str(work), backend=backend)
        # Every record so far in sealed segments, as in a log that has lived a while: a
        # background pass rewrites only those (it never seals the segment being written).
        log = FileLog(work / "history" / "log", durability="none")
        try:
            for _ in log.scan():  # a log is read to its end before it is written
                pass
            log.seal_active()
        finally:
            log.close()
        time.sleep(1.1)  # every finished run ended over a second ago: retention="1s" expires it
        for copy in ("demand", "idle", "resume"):
            shutil.copytree(work / "history", work / copy)
        demand = run_child("retention_pace", "background", 3600.0, data_dir=str(work / "demand"),
                           backend=backend, resume=False, share=1.0)  # fmt: skip
        idle = run_child("retention_pace", "background", 3600.0, data_dir=str(work / "idle"),
                         backend=backend, resume=False, share=None)  # fmt: skip
        busy = run_child("retention_pace", "background", 3600.0, data_dir=str(work / "resume"),
                         backend=backend, resume=True, share=None)  # fmt: skip
    share = idle["pass_cpu"] / idle["pass_wall"]
    demand_share = demand["pass_cpu"] / demand["pass_wall"]
    during, after = _p50(busy["during_ms"]), _p50(busy["after_ms"])
    results = {
        "expired_runs": runs,
        "live_runs": LIVE,
        "setting": idle["share"],
        "on_demand": demand,
        "background_idle": idle,
        "background_resuming": {k: v for k, v in busy.items() if not k.endswith("_ms")},
        "cpu_share_background": round(share, 3),
        "cpu_share_unpaced": round(demand_share, 3),
        "background_wall_over_unpaced": round(idle["pass_wall"] / demand["pass_wall"], 2),
        "resume_p50_during_ms": round(during, 3),
        "resume_p50_after_ms": round(after, 3),
        "resume_p50_during_over_after": round(during / after, 2),
        "resumes_during": len(busy["during_ms"]),
    }
    print(f"\nretention pass pacing: {runs:,} expired runs, {LIVE:,} live, backend {backend}\n")
    print(f"unpaced (share 1.0):  {demand['pass_wall']:.2f} s wall, CPU share "
          f"{demand_share:.2f}, {demand['rewritten']} segments rewritten")  # fmt: skip
    print(f"background (paced):   {idle['pass_wall']:.2f} s wall, CPU share {share:.2f} "
          f"(setting {idle['share']:.2f}), {idle['rewritten']} segments rewritten")  # fmt: skip
    print(f"resume p50, 1 resumer: {during:.3f} ms during the pass "
          f"({len(busy['during_ms'])} resumes), {after:.3f} ms after it: "
          f"{results['resume_p50_during_over_after']}x")  # fmt: skip
    print(
        "(CPU share: the process's CPU time over the pass's wall time, an idle event loop "
        "included)\n"
    )
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
