"""What one batch's trip to a writer thread and back costs, and which way of syncing is cheapest.

Usage::

    python -m benchmarks.handoff                    # asyncio, 3,000 round trips per way
    python -m benchmarks.handoff --backend trio --rounds 1000 --passes 5

Each round trip is what the log writer does for one batch: ``write(128 bytes)`` + ``fsync`` on an
``O_APPEND`` file in ``--work-dir``, done in another thread, timed from handing it over until the
event loop has its result. The baseline is the same write + fsync done inline on the event
loop's thread, sampled in the same run; "overhead" is a way's p50 minus the baseline's.

Ways of getting the result back to the event loop:

- ``to_thread``: ``anyio.to_thread.run_sync`` (the writer before it had its own thread);
- ``from_thread.run_sync``: a dedicated thread that calls back into the loop and blocks until
  the loop has run the callback (one more wake-up, of the thread);
- ``portal.start_task_soon``: a dedicated thread that starts a task in a ``BlockingPortal``;
- ``socketpair``: a dedicated thread that writes a byte to a socket the loop waits on with
  ``anyio.wait_readable`` (what ``LogWriter`` does).

Then, inline, the ways of making one write durable: ``write`` + ``fsync``, ``write`` +
``fdatasync``, and ``write`` on an ``O_DSYNC`` file, one write each in turn on three files.
All of it in ``--passes`` interleaved passes. Prints a table, then JSON. Never part of the test
suite.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

from .disk import default_work_dir
from .stats import percentile

RECORD = b"x" * 128


def _durable_write(fd: int) -> None:
    os.write(fd, RECORD)
    os.fsync(fd)


def _open(path: Path, flags: int = 0) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC | flags, 0o644)


def _time_inline(fn: Callable[[], None], rounds: int) -> list[float]:
    fn()  # the first sync also writes the new inode
    out = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        out.append(time.perf_counter() - began)
    return out


def _time_sync_flavours(work_dir: Path, rounds: int) -> dict[str, list[float]]:
    """fsync, fdatasync and O_DSYNC, one write each in turn, so the disk's drift hits all."""
    flavours: list[tuple[str, int, Callable[[int], None] | None]] = [
        ("inline write+fsync (again)", 0, os.fsync),
        ("inline write+fdatasync", 0, os.fdatasync),
        ("inline O_DSYNC write", os.O_DSYNC, None),
    ]
    fds = [_open(work_dir / f"sync-{i}.bin", flags) for i, (_, flags, _) in enumerate(flavours)]
    out: dict[str, list[float]] = {name: [] for name, _, _ in flavours}
    try:
        for _ in range(rounds + 1):
            for fd, (name, _, sync) in zip(fds, flavours, strict=True):
                began = time.perf_counter()
                os.write(fd, RECORD)
                if sync is not None:
                    sync(fd)
                out[name].append(time.perf_counter() - began)
    finally:
        for fd in fds:
            os.close(fd)
    return {name: values[1:] for name, values in out.items()}  # drop each file's first sync


async def _via_to_thread(work: Callable[[], None], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        began = time.perf_counter()
        await anyio.to_thread.run_sync(work)
        out.append(time.perf_counter() - began)
    return out


async def _via_own_thread(work: Callable[[], None], rounds: int, way: str) -> list[float]:
    inbox: queue.SimpleQueue[bool] = queue.SimpleQueue()
    receive, send = socket.socketpair()
    receive.setblocking(False)
    token = anyio.lowlevel.current_token()
    landed = anyio.Event()

    def land() -> None:
        landed.set()

    async def land_async() -> None:
        landed.set()

    out = []
    async with anyio.from_thread.BlockingPortal() as portal:

        def serve() -> None:
            while inbox.get():
                work()
                if way == "from_thread.run_sync":
                    anyio.from_thread.run_sync(land, token=token)
                elif way == "portal.start_task_soon":
                    portal.start_task_soon(land_async)
                else:
                    send.send(b"\0")

        thread = threading.Thread(target=serve, name=f"handoff-{way}")
        thread.start()
        try:
            for _ in range(rounds):
                landed = anyio.Event()
                began = time.perf_counter()
                inbox.put(True)
                if way == "socketpair":
                    await anyio.wait_readable(receive)
                    receive.recv(64)
                else:
                    await landed.wait()
                out.append(time.perf_counter() - began)
        finally:
            inbox.put(False)
            thread.join()
            receive.close()
            send.close()
    return out


async def _measure(work_dir: Path, rounds: int, passes: int) -> dict[str, list[float]]:
    """Every way ``rounds`` times, in ``passes`` interleaved passes (drift hits all alike)."""
    results: dict[str, list[float]] = {}
    per_pass = max(rounds // passes, 1)
    for _ in range(passes):
        fd = _open(work_dir / "handoff.bin")
        try:
            work = lambda fd=fd: _durable_write(fd)  # noqa: E731
            samples = {"inline write+fsync (baseline)": _time_inline(work, per_pass)}
            samples["to_thread"] = await _via_to_thread(work, per_pass)
            for way in ("from_thread.run_sync", "portal.start_task_soon", "socketpair"):
                samples[way] = await _via_own_thread(work, per_pass, way)
        finally:
            os.close(fd)
        samples.update(_time_sync_flavours(work_dir, per_pass))
        for name, values in samples.items():
            results.setdefault(name, []).extend(values)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.handoff", description=__doc__)
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    p.add_argument("--rounds", type=int, default=3000, help="round trips per way")
    p.add_argument("--passes", type=int, default=5, help="interleaved passes over the ways")
    p.add_argument("--work-dir", type=Path, default=default_work_dir())
    args = p.parse_args(argv)
    work_dir = args.work_dir / f"handoff-{os.getpid()}"
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        results = anyio.run(_measure, work_dir, args.rounds, args.passes, backend=args.backend)
    finally:
        for f in work_dir.iterdir():
            f.unlink()
        work_dir.rmdir()
    base = percentile(results["inline write+fsync (baseline)"], 50)
    report: dict[str, Any] = {"backend": args.backend, "rounds": args.rounds, "ways": {}}
    print(f"{'way':<32} {'p50 us':>8} {'p90 us':>8} {'overhead us':>12} {'x fsync p50':>12}")
    for name, values in results.items():
        p50, p90 = percentile(values, 50), percentile(values, 90)
        report["ways"][name] = {"p50_us": p50 * 1e6, "p90_us": p90 * 1e6}
        print(
            f"{name:<32} {p50 * 1e6:8.1f} {p90 * 1e6:8.1f} {(p50 - base) * 1e6:12.1f} "
            f"{p50 / base:12.2f}"
        )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
