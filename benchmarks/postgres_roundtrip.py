"""Hook round trip on the PostgreSQL store next to the embedded file log, in the same run.

Usage::

    python -m benchmarks.postgres_roundtrip                      # 2,000 runs per store
    python -m benchmarks.postgres_roundtrip --runs 500 --backend trio --json out.json
    python -m benchmarks.postgres_roundtrip --dsn postgresql://user@host/db --durability none

For each store, one ``Runtime`` starts ``--runs`` runs that each wait on a hook, then:

- *serial*: the first ``--serial`` hooks are resumed one at a time; "ack" is ``resume_hook``
  returning (``hook_received`` durable), "round trip" lasts until the run's ``run_completed``
  is durable. Every resume meets an idle log: the unloaded latency.
- *concurrent*: the rest are resumed by ``--concurrency`` tasks at once; resumes/s counts
  acknowledgements, and ack p50/p99 is the latency under that load.

The file log lives in a temporary directory (on the disk given by ``--work-dir``), the
PostgreSQL log in a fresh schema of the ``--dsn`` database, dropped afterwards. The table goes to
stdout, the JSON to stdout after it (and to ``--json`` if given). Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio

import actorflow as af
from actorflow.runtime.log.file_log import FileLog
from actorflow.runtime.log.postgres import PostgresLog
from actorflow.runtime.log.store import Durability, EventStore
from benchmarks.disk import MemoryBackedError, require_disk
from benchmarks.postgres_settings import server_durability
from benchmarks.stats import percentile

DEFAULT_DSN = os.environ.get(
    "ACTORFLOW_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


@af.workflow(name="postgres_roundtrip_hook_once")
async def hook_once(token: str) -> Any:
    return await af.create_hook(token=token)


def latency(values_s: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000.0 for v in values_s]
    return {"n": len(ms), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99)}


async def _wait_for_hook(rt: af.Runtime, token: str) -> None:
    with anyio.fail_after(60):
        while True:
            try:
                await rt.get_hook_by_token(token)
                return
            except af.HookNotFoundError:
                await anyio.sleep(0.0005)


async def round_trip(
    make_store: Callable[[], EventStore],
    data_dir: Path,
    *,
    runs: int,
    serial: int,
    concurrency: int,
) -> dict[str, Any]:
    """Start ``runs`` runs on a fresh store, resume them serially then concurrently; measure."""
    tokens = [f"bench:{secrets.token_hex(4)}:{i}" for i in range(runs)]
    handles: list[af.Run | None] = [None] * runs
    async with af.Runtime(data_dir, workflows=[hook_once], store=make_store()) as rt:
        pending = iter(range(runs))

        async def starter() -> None:
            for i in pending:
                handles[i] = await rt.start(hook_once, tokens[i])

        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(min(concurrency, runs)):
                tg.start_soon(starter)
        start_seconds = time.perf_counter() - began
        for token in tokens:
            await _wait_for_hook(rt, token)
        await rt.wait_idle()

        serial_ack: list[float] = []
        serial_trip: list[float] = []
        for i in range(serial):
            run = handles[i]
            assert run is not None
            sent = time.perf_counter()
            await rt.resume_hook(tokens[i], {"i": i})
            acked = time.perf_counter()
            await run.wait(timeout=60)
            serial_ack.append(acked - sent)
            serial_trip.append(time.perf_counter() - sent)

        concurrent_ack: list[float] = []
        queue = iter(range(serial, runs))
        overloaded = 0

        async def resumer() -> None:
            nonlocal overloaded
            for i in queue:
                sent = time.perf_counter()
                while True:
                    try:
                        await rt.resume_hook(tokens[i], {"i": i})
                        break
                    except af.OverloadedError:
                        overloaded += 1
                        await anyio.sleep(0.001)
                concurrent_ack.append(time.perf_counter() - sent)

        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(min(concurrency, max(runs - serial, 1))):
                tg.start_soon(resumer)
        acked_seconds = time.perf_counter() - began
        for run in handles[serial:]:
            assert run is not None
            await run.wait(timeout=120)
        completed_seconds = time.perf_counter() - began
        for i in (0, runs - 1):
            run = handles[i]
            assert run is not None and await run.result() == {"i": i}
        appends, syncs = rt.journal.writer.appended, rt.journal.writer.syncs
    resumed = runs - serial
    return {
        "starts_per_s": runs / start_seconds if start_seconds else math.nan,
        "serial_ack": latency(serial_ack),
        "serial_round_trip": latency(serial_trip),
        "resumes_per_s": resumed / acked_seconds if resumed and acked_seconds else math.nan,
        "completed_per_s": resumed / completed_seconds if resumed else math.nan,
        "concurrent_ack": latency(concurrent_ack),
        "overloaded": overloaded,
        "events_per_commit": appends / syncs if syncs else math.nan,
    }


def _trial(
    make_store: Callable[[], EventStore], data_dir: Path, backend: str, options: dict[str, int]
) -> dict[str, Any]:
    """One round trip in a fresh event loop of ``backend``."""
    return anyio.run(partial(round_trip, make_store, data_dir, **options), backend=backend)


def _median(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the trials (nested dicts figure by figure)."""
    first = trials[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = _median([trial[key] for trial in trials])
        else:
            out[key] = statistics.median(trial[key] for trial in trials)
    return out


def _finite(value: Any) -> Any:
    """NaN becomes null, so the JSON is standard JSON."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _fmt(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def print_table(results: dict[str, dict[str, Any]]) -> None:
    stores = list(results)
    rows: list[tuple[str, list[float]]] = [
        ("starts/s (concurrent)", [results[s]["starts_per_s"] for s in stores]),
        ("serial resume ack p50 (ms)", [results[s]["serial_ack"]["p50_ms"] for s in stores]),
        ("serial resume ack p99 (ms)", [results[s]["serial_ack"]["p99_ms"] for s in stores]),
        ("serial round trip p50 (ms)", [results[s]["serial_round_trip"]["p50_ms"] for s in stores]),
        ("serial round trip p99 (ms)", [results[s]["serial_round_trip"]["p99_ms"] for s in stores]),
        ("resumes/s (concurrent, acked)", [results[s]["resumes_per_s"] for s in stores]),
        ("runs completed/s (concurrent)", [results[s]["completed_per_s"] for s in stores]),
        ("concurrent ack p50 (ms)", [results[s]["concurrent_ack"]["p50_ms"] for s in stores]),
        ("concurrent ack p99 (ms)", [results[s]["concurrent_ack"]["p99_ms"] for s in stores]),
        ("events per commit (avg)", [results[s]["events_per_commit"] for s in stores]),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"{'figure':<{width}}  " + "  ".join(f"{s:>12}" for s in stores) + "  postgres/file")
    for label, values in rows:
        ratio = values[1] / values[0] if len(values) == 2 and values[0] else math.nan
        cells = "  ".join(f"{_fmt(v):>12}" for v in values)
        print(f"{label:<{width}}  {cells}  {_fmt(ratio):>13}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.postgres_roundtrip", description=__doc__)
    p.add_argument(
        "--dsn", default=DEFAULT_DSN, help=f"PostgreSQL database (default {DEFAULT_DSN})"
    )
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--serial", type=int, default=200, help="runs resumed one at a time first")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--durability", choices=("fsync", "none"), default="fsync")
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    p.add_argument("--work-dir", type=Path, default=None, help="where the file log goes")
    p.add_argument("--repeat", type=int, default=1, help="trials per store, taking turns")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if not 0 <= args.serial <= args.runs:
        p.error("--serial must be between 0 and --runs")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    durability: Durability = args.durability
    work = Path(tempfile.mkdtemp(prefix="actorflow-pg-bench-", dir=args.work_dir))
    if durability == "fsync":
        try:
            require_disk(work)
        except MemoryBackedError as exc:
            shutil.rmtree(work, ignore_errors=True)
            p.error(str(exc))
    settings = server_durability(args.dsn)
    trials: dict[str, list[dict[str, Any]]] = {"file": [], "postgres": []}
    options = {"runs": args.runs, "serial": args.serial, "concurrency": args.concurrency}
    schemas: list[str] = []
    try:
        # The stores take turns, so a load change on the machine hits both alike.
        for trial in range(args.repeat):
            directory = work / f"file-{trial}"
            trials["file"].append(
                _trial(
                    partial(FileLog, directory / "log", durability=durability),
                    directory,
                    args.backend,
                    options,
                )
            )
            schemas.append(f"bench_{secrets.token_hex(4)}")
            trials["postgres"].append(
                _trial(
                    partial(PostgresLog, args.dsn, durability=durability, schema=schemas[-1]),
                    work / f"postgres-{trial}",
                    args.backend,
                    options,
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for schema in schemas:
            _drop_schema(args.dsn, schema)
    results = {store: _median(runs) for store, runs in trials.items()}
    print(
        f"hook round trip, {args.runs} runs ({args.serial} serial, then {args.concurrency} "
        f"concurrent resumers), durability={durability}, backend={args.backend}, "
        f"median of {args.repeat} trial(s) per store; PostgreSQL server: "
        + ", ".join(f"{name}={value}" for name, value in settings.items())
    )
    print_table(results)
    report = {
        "benchmark": "postgres_roundtrip",
        "command": " ".join(["python -m benchmarks.postgres_roundtrip", *(argv or sys.argv[1:])]),
        "durability": durability,
        "postgres_settings": settings,
        "backend": args.backend,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "repeat": args.repeat,
        **options,
        "results": results,
        "trials": trials,
    }
    text = json.dumps(_finite(report), indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
