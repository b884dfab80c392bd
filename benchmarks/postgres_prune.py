"""Resume throughput on PostgreSQL while a retention prune deletes many expired runs, against the
same runtime's throughput without one, in the same run.

Usage (from the repository root)::

    python -m benchmarks.postgres_prune                      # 200,000 expired runs, about 1 min
    python -m benchmarks.postgres_prune --quick              # a smoke run, about 10 s
    python -m benchmarks.postgres_prune --expired 200000 --batch-size 500 --json out.json
    python -m benchmarks.postgres_prune --dsn postgresql://user@host:5432/db

Steps, on a fresh schema of the ``--dsn`` database (dropped at the end, also on an error):

1. *Fill* (not timed): ``--expired`` runs that ended 30 days ago (by their events' own times),
   written through ``ClusterLog.append`` as a runtime writes them (``durability="none"``, only
   to build them fast): ``run_created``, ``run_started``, ``hook_created``, ``hook_received``,
   ``hook_disposed``, ``run_completed``, and the idempotency key of the delivery: what a
   finished run with one keyed resume leaves.
2. One runtime (``store="postgresql://..."``, ``--durability``, fsync by default) starts
   ``--runs`` runs of ``bench_cluster_hook_loop``, each waiting on its hook.
3. Three phases of ``--concurrency`` resumers sending back to back to random runs (every other
   resume with an idempotency key, which goes through the inbox and ``delivery_keys``, the
   tables the prune deletes from too); resumes/s counts acknowledgements over the phase's
   wall time:
   - *before*: ``--seconds`` seconds, the expired runs still there;
   - *during*: while ``ClusterLog.prune_expired(now - 7 days, batch_size=--batch-size)`` runs
     in a worker thread, from its start to its end;
   - *after*: ``--seconds`` seconds on the pruned tables.
   The ratio reported is *during / before* (and *during / after*). While the prune runs, the
   backends waiting for a lock are sampled every 10 ms (``pg_locks``): a resume held up by a
   batch would show there, so lower throughput without lock waits is the prune's CPU and I/O.
4. *Check* (not timed): every run gets ``{"last": true}`` and returns the ids it received; each
   acknowledged id must be there exactly once, in the order its resumer had it acknowledged
   (``tests/fixtures/exactly_once.py``), and nothing of the expired runs may be left. The plan
   of a batch at the filled size is printed too: which tables, if any, it reads whole.

The table goes to stdout, then the JSON (also to ``--json``). Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from psycopg import sql
from tests.fixtures.exactly_once import check_exactly_once

import actorflow as af
from actorflow.runtime.core.events import Event
from actorflow.runtime.ids import new_id
from actorflow.runtime.log.postgres_cluster import ClusterLog
from actorflow.runtime.log.postgres_retention import PruneReport, _queries
from actorflow.runtime.log.store import Durability
from actorflow.runtime.payloads import Payloads
from benchmarks.cluster_workflows import hook_loop
from benchmarks.disk import MemoryBackedError, require_disk
from benchmarks.postgres_settings import server_durability
from benchmarks.stats import percentile

DEFAULT_DSN = os.environ.get(
    "ACTORFLOW_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
DAY = 86400.0
_FILL_CHUNK = 1000  # runs per append while filling


def fill_expired(dsn: str, schema: str, count: int, progress: Callable[[str], None]) -> int:
    """Write ``count`` runs that ended 30 days ago; return how many events that made."""
    log = ClusterLog(dsn, node_id=f"filler-{secrets.token_hex(3)}", schema=schema,
                     durability="none")  # fmt: skip
    payloads = Payloads(None)
    ended = time.time() - 30 * DAY
    events = 0
    try:
        for _ in log.scan():
            pass
        for first in range(0, count, _FILL_CHUNK):
            records: list[bytes] = []
            for i in range(first, min(count, first + _FILL_CHUNK)):
                run_id, hook_id = new_id("wrun_"), new_id("hook_")
                token = f"expired:{i}"
                at = ended + i * 0.001
                steps: list[tuple[str, str | None, dict[str, Any]]] = [
                    ("run_created", None, {"workflow": hook_loop.name,
                                           "input": {"args": [token], "kwargs": {}}}),
                    ("run_started", None, {}),
                    ("hook_created", hook_id, {"token": token}),
                    ("hook_received", hook_id, {"payload": {"i": i}, "token": token,
                                                "external": True, "idempotency_key": f"k{i}",
                                                "digest": "d"}),
                    ("hook_disposed", hook_id, {"token": token}),
                    ("run_completed", None, {"result": [i]}),
                ]  # fmt: skip
                for kind, corr, data in steps:
                    event = Event(new_id("evnt_"), run_id, kind, corr, at, data)
                    records.append(payloads.encode(event))
            log.append(records)
            log.sync()
            events += len(records)
            progress(f"filled {min(count, first + _FILL_CHUNK):,} / {count:,} expired runs")
    finally:
        log.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (token, key, hook_id, digest, event_id) "
                "SELECT convert_from(record, 'UTF8')::json -> 5 ->> 'token', "
                "convert_from(record, 'UTF8')::json -> 5 ->> 'idempotency_key', "
                "correlation_id, 'd', event_id FROM {} WHERE type = 'hook_received'"
            ).format(sql.Identifier(schema, "delivery_keys"), sql.Identifier(schema, "events"))
        )
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "events")))
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "runs")))
    return events


class Phase:
    """What the resumers saw in one phase."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.acks: list[float] = []
        self.seconds = 0.0
        self.overloaded = 0

    def figures(self) -> dict[str, Any]:
        ms = [a * 1000 for a in self.acks]
        return {
            "resumes": len(ms),
            "seconds": self.seconds,
            "resumes_per_s": len(ms) / self.seconds if self.seconds else math.nan,
            "ack_p50_ms": percentile(ms, 50) if ms else math.nan,
            "ack_p99_ms": percentile(ms, 99) if ms else math.nan,
            "ack_max_ms": max(ms) if ms else math.nan,
            "overloaded": self.overloaded,
        }


class LockWaits:
    """Samples, every 10 ms while the prune runs, the backends of the database that wait for a
    lock (``pg_locks.granted = false``), and whether the prune's connection is among those they
    wait for: a resume held up by a batch would show here."""

    _QUERY = (
        "SELECT left(a.query, 40) || CASE WHEN EXISTS (SELECT 1 FROM pg_stat_activity b"
        " WHERE b.pid = ANY(pg_blocking_pids(a.pid)) AND b.application_name = 'actorflow-prune')"
        " THEN ' (waits for the prune)' ELSE ' (waits for ' || l.locktype || ')' END"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE NOT l.granted AND a.datname = current_database()"
    )

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.samples = 0
        self.waiting: dict[str, int] = {}  # query prefix -> samples it was seen waiting in

    async def watch(self, done: anyio.Event) -> None:
        conn = await anyio.to_thread.run_sync(
            lambda: psycopg.connect(self.dsn, autocommit=True, application_name="bench-watch")
        )
        try:
            while not done.is_set():
                rows = await anyio.to_thread.run_sync(lambda: conn.execute(self._QUERY).fetchall())
                self.samples += 1
                for (query,) in rows:
                    self.waiting[str(query)] = self.waiting.get(str(query), 0) + 1
                await anyio.sleep(0.01)
        finally:
            conn.close()

    def figures(self) -> dict[str, Any]:
        return {"samples": self.samples, "waiting": self.waiting}


class Resumers:
    """``concurrency`` tasks resuming random runs; every acknowledged id is remembered."""

    def __init__(self, rt: af.Runtime, tokens: list[str], run_ids: list[str], seed: int) -> None:
        self.rt = rt
        self.tokens = tokens
        self.run_ids = run_ids
        self.random = random.Random(seed)
        self.acked: dict[str, list[str]] = {run_id: [] for run_id in run_ids}
        self.order: dict[tuple[object, str], list[str]] = {}
        self.sent = 0

    async def phase(self, phase: Phase, concurrency: int, until: Callable[[], bool]) -> None:
        async def resumer(worker: int) -> None:
            while not until():
                index = self.random.randrange(len(self.tokens))
                self.sent += 1
                payload_id = f"p{self.sent}"
                key = payload_id if self.sent % 2 else None
                began = time.perf_counter()
                while True:
                    try:
                        await self.rt.resume_hook(self.tokens[index], {"i": payload_id},
                                                  idempotency_key=key)  # fmt: skip
                        break
                    except af.OverloadedError:
                        phase.overloaded += 1
                        await anyio.sleep(0.001)
                phase.acks.append(time.perf_counter() - began)
                run_id = self.run_ids[index]
                self.acked[run_id].append(payload_id)
                self.order.setdefault((worker, run_id), []).append(payload_id)

        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for worker in range(concurrency):
                tg.start_soon(resumer, worker)
        phase.seconds = time.perf_counter() - began


async def measure(
    dsn: str,
    schema: str,
    data_dir: Path,
    *,
    runs: int,
    concurrency: int,
    seconds: float,
    batch_size: int,
    durability: Durability,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Steps 2 to 4 of the module docstring."""
    tokens = [f"bench:{i}" for i in range(runs)]
    rt = af.Runtime(data_dir, workflows=[hook_loop], store=dsn, schema=schema,
                    durability=durability, node_id="bench")  # fmt: skip
    async with rt:
        log = rt.store
        assert isinstance(log, ClusterLog)
        handles = [await rt.start(hook_loop, token) for token in tokens]
        for token in tokens:
            with anyio.fail_after(60):
                while True:
                    try:
                        await rt.get_hook_by_token(token)
                        break
                    except af.HookNotFoundError:
                        await anyio.sleep(0.001)
        resumers = Resumers(rt, tokens, [h.run_id for h in handles], seed=12)
        before, during, after = Phase("before"), Phase("during"), Phase("after")

        progress("phase before: no prune")
        deadline = time.perf_counter() + seconds
        await resumers.phase(before, concurrency, lambda: time.perf_counter() > deadline)

        progress("phase during: prune running")
        pruned: list[PruneReport] = []
        prune_seconds = [0.0]
        done = anyio.Event()

        async def prune() -> None:
            began = time.perf_counter()
            try:
                cutoff = time.time() - 7 * DAY
                report = await anyio.to_thread.run_sync(
                    lambda: log.prune_expired(cutoff, batch_size=batch_size)
                )
                pruned.append(report)
            finally:
                prune_seconds[0] = time.perf_counter() - began
                done.set()

        waits = LockWaits(dsn)
        async with anyio.create_task_group() as tg:
            tg.start_soon(prune)
            tg.start_soon(waits.watch, done)
            await resumers.phase(during, concurrency, done.is_set)

        progress("phase after: tables pruned")
        deadline = time.perf_counter() + seconds
        await resumers.phase(after, concurrency, lambda: time.perf_counter() > deadline)

        progress("check: every acknowledged id exactly once")
        for token in tokens:
            await rt.resume_hook(token, {"last": True})
        results = {h.run_id: await h.result(timeout=300) for h in handles}
        checked = check_exactly_once(resumers.acked, results, order=resumers.order,
                                     context="postgres_prune")  # fmt: skip
    report = pruned[0]
    figures = {p.name: p.figures() for p in (before, during, after)}
    return {
        "phases": figures,
        "during_over_before": figures["during"]["resumes_per_s"]
        / figures["before"]["resumes_per_s"],
        "during_over_after": figures["during"]["resumes_per_s"] / figures["after"]["resumes_per_s"],
        "prune": asdict(report),
        "prune_seconds": prune_seconds[0],
        "pruned_runs_per_s": report.runs / prune_seconds[0] if prune_seconds[0] else math.nan,
        "ids_checked": checked,
        "lock_waits": waits.figures(),
    }


def seq_scans(dsn: str, schema: str, batch_size: int) -> list[str]:
    """The tables a prune batch's plan reads whole (``Seq Scan``), at the filled size: none is
    the claim that a batch costs the same whatever the tables hold."""
    with psycopg.connect(dsn) as conn:
        params = {"before": time.time() - 7 * DAY, "limit": batch_size}
        plan = conn.execute(b"EXPLAIN " + _queries(schema).batch, params).fetchall()
        conn.rollback()
    return [str(row[0]).strip() for row in plan if "Seq Scan" in str(row[0])]


def _left(dsn: str, schema: str) -> dict[str, int]:
    """Rows left of the expired runs (their tokens start with ``expired:``)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        out = {}
        for table, where in (("runs", f"ended_at < extract(epoch FROM now()) - {7 * DAY}"),
                             ("events", "convert_from(record, 'UTF8') LIKE '%expired:%'"),
                             ("delivery_keys", "token LIKE 'expired:%'")):  # fmt: skip
            query = sql.SQL("SELECT count(*) FROM {} WHERE " + where).format(
                sql.Identifier(schema, table)
            )
            row = conn.execute(query).fetchone()
            out[table] = int(row[0]) if row else -1
        return out


def _drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _load() -> float:
    return os.getloadavg()[0]


def _fmt(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def print_table(result: dict[str, Any]) -> None:
    phases = result["phases"]
    rows = [
        ("resumes/s (acked)", "resumes_per_s"),
        ("ack p50 (ms)", "ack_p50_ms"),
        ("ack p99 (ms)", "ack_p99_ms"),
        ("ack max (ms)", "ack_max_ms"),
        ("resumes", "resumes"),
        ("seconds", "seconds"),
    ]
    print(f"{'figure':<20}" + "".join(f"{name:>12}" for name in phases))
    for label, key in rows:
        print(f"{label:<20}" + "".join(f"{_fmt(phases[p][key]):>12}" for p in phases))
    prune = result["prune"]
    print(
        f"during / before {result['during_over_before']:.2f}x, during / after "
        f"{result['during_over_after']:.2f}x; prune: {prune['runs']:,} runs, "
        f"{prune['events']:,} events, {prune['delivery_keys']:,} keys in {prune['batches']} "
        f"batches, {result['prune_seconds']:.1f} s ({_fmt(result['pruned_runs_per_s'])} runs/s); "
        f"{result['ids_checked']:,} acknowledged ids checked exactly once"
    )
    waits = result["lock_waits"]
    seen = sum(waits["waiting"].values())
    print(
        f"lock waits in the database while the prune ran: {seen} in {waits['samples']} samples"
        + "".join(f"; {n} x {query!r}" for query, n in waits["waiting"].items())
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.postgres_prune",
                                description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument(
        "--dsn", default=DEFAULT_DSN, help=f"a postgresql:// URL (default {DEFAULT_DSN})"
    )
    p.add_argument("--expired", type=int, default=200_000, help="expired runs to prune")
    p.add_argument("--batch-size", type=int, default=1000, help="runs per prune transaction")
    p.add_argument("--runs", type=int, default=200, help="live runs taking resumes")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0, help="length of the before/after phases")
    p.add_argument("--durability", choices=("fsync", "none"), default="fsync")
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    p.add_argument("--work-dir", type=Path, default=None, help="where the runtime's data dir goes")
    p.add_argument("--quick", action="store_true", help="5,000 expired runs, 3 s phases")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.expired, args.seconds = 5_000, 3.0
    if not args.dsn.startswith(("postgresql://", "postgres://")):
        p.error("--dsn must be a postgresql:// URL (the runtime's store= takes one)")
    durability: Durability = args.durability
    work = Path(tempfile.mkdtemp(prefix="actorflow-pg-prune-", dir=args.work_dir))
    if durability == "fsync":
        try:
            require_disk(work)
        except MemoryBackedError as exc:
            shutil.rmtree(work, ignore_errors=True)
            p.error(str(exc))
    settings = server_durability(args.dsn)
    schema = f"bench_{secrets.token_hex(4)}"

    def progress(text: str) -> None:
        print(f"[postgres_prune] {text}", file=sys.stderr, flush=True)

    load_before = _load()
    try:
        began = time.perf_counter()
        events = fill_expired(args.dsn, schema, args.expired, progress)
        progress(f"filled {events:,} events in {time.perf_counter() - began:.1f} s")
        scans = seq_scans(args.dsn, schema, args.batch_size)
        result = anyio.run(
            lambda: measure(
                args.dsn, schema, work / "data", runs=args.runs, concurrency=args.concurrency,
                seconds=args.seconds, batch_size=args.batch_size, durability=durability,
                progress=progress,
            ),
            backend=args.backend,
        )  # fmt: skip
        left = _left(args.dsn, schema)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        _drop_schema(args.dsn, schema)
    if any(left.values()):
        print(f"FAILED: rows of expired runs left after the prune: {left}", file=sys.stderr)
        return 1
    print(
        f"resumes beside a prune of {args.expired:,} expired runs ({events:,} events), "
        f"{args.runs} live runs, {args.concurrency} resumers, durability={durability}, "
        f"backend={args.backend}; PostgreSQL server: "
        + ", ".join(f"{name}={value}" for name, value in settings.items())
        + f"; load average {load_before:.2f} -> {_load():.2f} on {os.cpu_count()} CPUs"
    )
    print_table(result)
    print(f"tables a batch reads whole (its plan at this size): {', '.join(scans) or 'none'}")
    report = {
        "benchmark": "postgres_prune",
        "command": " ".join(["python -m benchmarks.postgres_prune", *(argv or sys.argv[1:])]),
        "durability": durability,
        "postgres_settings": settings,
        "backend": args.backend,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": [load_before, _load()],
        "expired_runs": args.expired,
        "expired_events": events,
        "batch_size": args.batch_size,
        "runs": args.runs,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "left_after_prune": left,
        "batch_seq_scans": scans,
        **result,
    }
    text = json.dumps(report, indent=2, default=lambda v: None)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
