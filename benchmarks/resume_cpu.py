"""Where a resume's CPU goes: the concurrent phase of the hook round trip, measured and profiled.

Usage::

    python -m benchmarks.resume_cpu                      # CPU per resume, plain and encrypted
    python -m benchmarks.resume_cpu --runs 20000 --reps 3
    python -m benchmarks.resume_cpu --parts              # thread CPU of the main parts
    python -m benchmarks.resume_cpu --profile out.prof   # cProfile of the phase (slows it 3-4x)
    python -m benchmarks.resume_cpu --only on --floor    # encrypted only; the event loop's floor
    python -m benchmarks.resume_cpu --instructions --runs 2000   # under valgrind: see below
    python -m benchmarks.resume_cpu --only on --python-sealer    # without the compiled sealer

Each repetition starts ``--runs`` runs of ``hook_once`` on a fresh runtime (fsync on), waits
until every hook is registered and the log is idle, then resumes them all from ``--concurrency``
tasks, as the "concurrent" phase of ``roundtrip.hook_round_trip`` does, and waits until every
run's end is durable. Over that phase it reads the process's CPU time (every thread, as the
"CPU per resume" rows of ``python -m benchmarks``), the event loop thread's
(``time.thread_time``) and ``getrusage`` user and system time. Plain and encrypted runtimes
alternate, and the best repetition of each is kept.

``--parts`` adds ``time.thread_time`` around the dispatcher's turn for one actor and around the
writer's callback for a durable batch (two clock reads per call, about 1 us, are included);
what remains of the loop thread's time is the resumers' side (``resume_hook``) and the event
loop. ``--floor`` measures what the same number of tasks cost doing nothing but wait for a
shared per-batch event with a thread hop per batch: the event loop's share no runtime change
can remove.

``--instructions`` counts instead of timing, for a machine too busy to time on: it runs the
program twice per variant under ``valgrind --tool=callgrind`` (user-space instructions of every
thread, not the kernel's), once up to the resumes and once with them, and divides the
difference by ``--runs``. Slow (about a minute per 1,000 runs); the count does not move with
other load, though the batches it forms do a little (fewer events per fsync under valgrind).

Prints a table, then JSON. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

import actorflow as af
from actorflow.runtime import crypto as crypto_module
from actorflow.runtime import journal as journal_module
from actorflow.runtime import supervisor as supervisor_module

from .disk import default_work_dir
from .roundtrip import wait_for_hook
from .workflows import hook_once, observations

_parts: dict[str, float] = defaultdict(float)


def _timed(cls: type, name: str, label: str) -> Callable[[], None]:
    """Wrap ``cls.name`` to add its thread CPU time to ``_parts[label]``; returns the undo."""
    original = getattr(cls, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            _parts[label] += time.thread_time() - began

    setattr(cls, name, wrapper)
    return lambda: setattr(cls, name, original)


async def _phase(data: Path, runs: int, concurrency: int, key: bytes | None,
                 profile: cProfile.Profile | None, resume: bool = True) -> dict[str, Any]:  # fmt: skip
    observations.clear()
    async with af.Runtime(data, workflows=[hook_once], durability="fsync",
                          encryption_key=key) as rt:  # fmt: skip
        tokens = [f"cpu:{i}" for i in range(runs)]
        handles: list[af.Run] = []
        to_start = iter(tokens)

        async def starter() -> None:
            for token in to_start:
                handles.append(await rt.start(hook_once, token))

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(starter)
        for token in tokens:
            await wait_for_hook(rt, token)
        await rt.wait_idle()
        if not resume:
            return {}
        queue: Iterator[str] = iter(tokens)

        async def resumer() -> None:
            for token in queue:
                while True:
                    try:
                        await rt.resume_hook(token, {"k": token})
                        break
                    except af.OverloadedError:
                        await anyio.sleep(0.001)

        _parts.clear()
        before = resource.getrusage(resource.RUSAGE_SELF)
        cpu, loop_cpu, wall = time.process_time(), time.thread_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(resumer)
        for handle in handles:
            await handle.wait(timeout=120)
        if profile is not None:
            profile.disable()
        cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
        wall = time.perf_counter() - wall
        after = resource.getrusage(resource.RUSAGE_SELF)
        us = 1e6 / runs
        return {
            "cpu_us": cpu * us,
            "loop_thread_us": loop_cpu * us,
            "user_us": (after.ru_utime - before.ru_utime) * us,
            "system_us": (after.ru_stime - before.ru_stime) * us,
            "resumes_per_s": runs / wall,
            "syncs": rt.journal.writer.syncs,
            "parts_us": {label: seconds * us for label, seconds in _parts.items()},
        }


async def _floor(runs: int, concurrency: int) -> float:
    """CPU per operation of tasks that only wait for a shared per-batch event."""
    state: dict[str, Any] = {"batch": anyio.Event(), "left": runs}
    wake = anyio.Event()

    async def waiter(queue: Iterator[int]) -> None:
        for _ in queue:
            batch = state["batch"]
            wake.set()
            await batch.wait()
            state["left"] -= 1

    async def writer() -> None:
        nonlocal wake
        while state["left"] > 0:
            with anyio.move_on_after(0.05):
                await wake.wait()
            wake = anyio.Event()
            await anyio.to_thread.run_sync(lambda: None)
            batch, state["batch"] = state["batch"], anyio.Event()
            batch.set()

    queue = iter(range(runs))
    cpu = time.process_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        for _ in range(concurrency):
            tg.start_soon(waiter, queue)
    return (time.process_time() - cpu) * 1e6 / runs


def _instructions(args: argparse.Namespace, label: str) -> int:
    """User-space instructions per resume of one variant, counted by callgrind."""
    counts = []
    for phase in ("setup", "all"):
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                   sys.executable, "-m", "benchmarks.resume_cpu", "--child", phase,
                   "--only", label, "--runs", str(args.runs),
                   "--concurrency", str(args.concurrency), "--work-dir", str(args.work_dir)]  # fmt: skip
        if args.python_sealer:
            command.append("--python-sealer")
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        found = re.search(r"Collected : (\d+)", done.stderr)
        assert found is not None, done.stderr[-2000:]
        counts.append(int(found.group(1)))
    return int((counts[1] - counts[0]) // args.runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--only", choices=["off", "on"], help="encryption off or on only")
    parser.add_argument("--parts", action="store_true", help="thread CPU of the main parts")
    parser.add_argument("--profile", help="write a cProfile of the phase here (last rep)")
    parser.add_argument("--floor", action="store_true", help="also the event loop's floor")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--work-dir", type=Path, default=default_work_dir())
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per resume under valgrind instead of timing")  # fmt: skip
    parser.add_argument("--python-sealer", action="store_true",
                        help="seal encrypted values in Python, as an install without the "
                        "compiled sealer does")  # fmt: skip
    parser.add_argument("--child", choices=["setup", "all"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.python_sealer:
        crypto_module.NATIVE_SEALER = False  # read as each KeyRing is made
    if args.child is not None:
        # One run under valgrind: a fixed master key, so both phases do the same work.
        data = args.work_dir / f"resume-cpu-{os.getpid()}"
        shutil.rmtree(data, ignore_errors=True)
        try:
            anyio.run(_phase, data, args.runs, args.concurrency,
                      bytes(32) if args.only == "on" else None, None, args.child == "all",
                      backend=args.backend)  # fmt: skip
        finally:
            shutil.rmtree(data, ignore_errors=True)
        return
    if args.instructions:
        labels = [args.only] if args.only else ["off", "on"]
        counted = {label: _instructions(args, label) for label in labels}
        for label, count in counted.items():
            print(f"encryption {label}: {count:,} instructions per resume (callgrind)")
        print(json.dumps({"runs": args.runs, "instructions_per_resume": counted}))
        return
    undo = []
    if args.parts:
        undo.append(_timed(supervisor_module.Supervisor, "_guard", "dispatcher: one actor's turn"))
        undo.append(_timed(journal_module.Journal, "_on_durable", "writer: a durable batch"))
    key = os.urandom(32)
    variants = [("off", None), ("on", key)]
    if args.only:
        variants = [v for v in variants if v[0] == args.only]
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in variants}
    profile = cProfile.Profile() if args.profile else None
    for rep in range(args.reps):
        for label, k in variants if rep % 2 == 0 else variants[::-1]:
            data = args.work_dir / f"resume-cpu-{os.getpid()}-{label}-{rep}"
            shutil.rmtree(data, ignore_errors=True)
            try:
                last = rep == args.reps - 1
                results[label].append(anyio.run(
                    _phase, data, args.runs, args.concurrency, k, profile if last else None,
                    backend=args.backend,
                ))  # fmt: skip
            finally:
                shutil.rmtree(data, ignore_errors=True)
    for restore in undo:
        restore()
    report: dict[str, Any] = {"runs": args.runs, "concurrency": args.concurrency,
                              "backend": args.backend, "load_average": os.getloadavg()}  # fmt: skip
    for label, reps in results.items():
        best = min(reps, key=lambda r: r["cpu_us"])
        report[f"encryption {label}"] = best
        report[f"encryption {label}, cpu_us of every rep"] = [round(r["cpu_us"], 1) for r in reps]
        print(f"encryption {label}: CPU per resume {best['cpu_us']:.1f} us (loop thread "
              f"{best['loop_thread_us']:.1f}, user {best['user_us']:.1f}, system "
              f"{best['system_us']:.1f}), {best['resumes_per_s']:,.0f} resumes/s, "
              f"{best['syncs']} syncs; every rep: {report[f'encryption {label}, cpu_us of every rep']}")  # fmt: skip
        for part, value in best["parts_us"].items():
            print(f"    {part}: {value:.1f} us per resume")
    if len(results) == 2:
        on, off = report["encryption on"]["cpu_us"], report["encryption off"]["cpu_us"]
        report["cpu_overhead_percent"] = 100 * (on / off - 1)
        print(f"encryption's CPU overhead: {report['cpu_overhead_percent']:+.1f}%")
    if args.floor:
        report["floor_us"] = min(anyio.run(_floor, args.runs, args.concurrency,
                                           backend=args.backend) for _ in range(args.reps))  # fmt: skip
        print(f"floor (tasks waiting for a per-batch event, a thread hop per batch): "
              f"{report['floor_us']:.1f} us per operation")  # fmt: skip
    if profile is not None:
        profile.dump_stats(args.profile)
        print(f"profile of the last repetition: {args.profile}")
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
