"""Hook round trip over HTTP on PostgreSQL with one, two and three ``actorflow serve`` processes,
next to the embedded file log (one process) measured in the same run.

Usage (from the repository root)::

    python -m benchmarks.postgres_processes                 # about 50 s on 2 cores
    python -m benchmarks.postgres_processes --quick         # a smoke run, about 5 s
    python -m benchmarks.postgres_processes --processes 1,2 --json out.json
    python -m benchmarks.postgres_processes --send-to owner # no resume needs routing
    python -m benchmarks.postgres_processes --dsn postgresql://user@host:5432/db

Each configuration runs real ``actorflow serve benchmarks.cluster_workflows:workflows``
subprocesses bound to 127.0.0.1 (port 0; the URL is read from each one's "serving ... at URL"
log line): first the file log with one process (the baseline, in a temporary directory), then
PostgreSQL with each count of ``--processes``, every count on a fresh database
(``CREATE DATABASE actorflow_bench_<random>`` through the ``--dsn`` admin connection, dropped
``WITH (FORCE)`` at the end, also on an error, Ctrl-C or SIGTERM). The processes of one configuration
share that database through ``--store``. Then, from this process (keep-alive connections of
``benchmarks/raw_http.py``: a client library would cost more CPU than the server):

1. ``--runs`` runs of ``bench_cluster_hook_loop`` are started through ``POST .../runs``, run
   ``i`` on process ``i mod N``; each creates the hook ``bench:<i>`` and takes payloads until
   one says ``{"last": true}``;
2. the harness waits (bounded) until every token answers ``GET .../hooks/<token>`` on every
   process;
3. *serial*: ``--serial`` resumes one at a time (``POST .../hooks/resume``, addressed by token,
   each to a random process): the unloaded ack latency;
4. *concurrent*: ``--concurrency`` clients send resumes back to back, each to a random process,
   until ``--resumes`` were sent or ``--seconds`` passed, whichever comes first. Resumes/s counts
   acknowledgements (``2xx``: ``hook_received`` durable) over the phase's wall time; ack latency
   runs from the first send to the ``2xx`` (a ``503`` is retried after 1 ms, and counted);
5. *check* (not timed): every run gets its last payload and must complete; it returns the ids
   of the payloads it received (every payload carries a unique id), and each id acknowledged
   to it must be there exactly once, nothing unacknowledged (an id whose answer was lost to a
   connection error may be there, at most once), no id twice anywhere, and each client's ids
   to a run in the order they were acknowledged: ``tests/fixtures/exactly_once.py``, the check
   of the kill -9 suites.

Every answer that is not ``2xx`` is counted by status and reported, never hidden. Each
PostgreSQL figure is also given as a ratio against the file log of the same run, and the CPUs
busy during the concurrent phase are split between the servers, PostgreSQL, this client and
other load (a row with much other load is flagged). ``--send-to owner`` sends each resume to
the process that started its run instead of a random one: the difference shows what routing a
resume to the run's owner costs. The processes are stopped with SIGTERM (SIGKILL after
``--stop-timeout``), and every wait is bounded. A configuration whose processes do not start,
exit during the run, or fail the check is reported as failed, with their output, and the next
one runs. The table goes to stdout, then the JSON (also to ``--json``). Never part of the test
suite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit, urlunsplit

import anyio
import orjson
import psycopg
from psycopg import sql
from tests.fixtures.exactly_once import NotExactlyOnce, check_exactly_once

from benchmarks.disk import MemoryBackedError, require_disk
from benchmarks.postgres_settings import server_durability
from benchmarks.raw_http import TRANSPORT_ERRORS, Connection
from benchmarks.stats import sketch, summary

DEFAULT_DSN = os.environ.get(
    "ACTORFLOW_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
PREFIX = "/.well-known/workflow/v1"
WORKFLOW = "bench_cluster_hook_loop"
APP = "benchmarks.cluster_workflows:workflows"
REPOSITORY = Path(__file__).resolve().parent.parent
ACTORFLOW = Path(sys.executable).with_name("actorflow")
_READY = re.compile(r"serving .*? at (http://[^\s(]+)")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: CPUs busy outside the benchmark above which a configuration's figures are flagged.
OTHER_LOAD_WARNING = 0.3


@dataclass(frozen=True)
class Options:
    runs: int
    serial: int
    resumes: int
    seconds: float
    concurrency: int
    durability: str
    worker: str
    start_timeout: float
    stop_timeout: float
    phase_timeout: float
    request_timeout: float
    send_to: str


class ConfigurationFailed(Exception):
    """A configuration could not be measured: its processes did not start or exited, a
    bounded wait ran out, or the check found runs that did not get what was acknowledged."""

    #: The processes' last output, when they were already stopped.
    output: dict[str, str] | None = None


# -- the serving processes ----------------------------------------------------------------------


class Server:
    """One ``actorflow serve`` subprocess; its stdout and stderr go to a file.

    A file rather than a pipe: a pipe nobody drains blocks the server once it is full.
    """

    def __init__(self, name: str, command: list[str], output: Path, env: dict[str, str]) -> None:
        self.name = name
        self.output = output
        with output.open("wb") as out:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=output.parent,
            )
        self.url = ""

    def ready(self) -> bool:
        """True once the process printed its URL.

        Raises:
            ConfigurationFailed: the process exited before it served.
        """
        if self.url:
            return True
        found = _READY.search(self.text())
        if found:
            self.url = found.group(1)
            return True
        if self.proc.poll() is not None:
            raise ConfigurationFailed(
                f"{self.name} exited with status {self.proc.returncode} before serving"
            )
        return False

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far, all CPUs summed (Linux ``/proc/stat``;
    NaN elsewhere): PostgreSQL's backends, the servers, this client and anything else."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10])  # guest time is counted in user time already
    return (sum(fields) - guest - idle) / _TICKS


def launch(
    label: str, store_args: list[str], work: Path, count: int, opts: Options, secret: str
) -> list[Server]:
    """Start ``count`` processes and wait (bounded) until each one serves.

    Raises:
        ConfigurationFailed: one exited or did not serve within ``--start-timeout``; every
            process already started is stopped first.
    """
    env = {**os.environ, "ACTORFLOW_RESUME_SECRET": secret}
    env.pop("ACTORFLOW_STORE", None)  # the store is always given on the command line
    servers: list[Server] = []
    try:
        for index in range(count):
            folder = work / f"{label}-p{index + 1}"
            folder.mkdir(parents=True)
            command = [
                str(ACTORFLOW), "serve", APP, "--app-dir", str(REPOSITORY),
                "--bind", "127.0.0.1:0", "--data-dir", str(folder / "data"),
                "--worker", opts.worker, "--durability", opts.durability,
                "--graceful-timeout", "5", *store_args,
            ]  # fmt: skip
            servers.append(Server(f"process {index + 1}", command, folder / "serve.log", env))
        deadline = time.monotonic() + opts.start_timeout
        while not all(server.ready() for server in servers):
            if time.monotonic() > deadline:
                late = [s.name for s in servers if not s.url]
                raise ConfigurationFailed(
                    f"{', '.join(late)} did not serve within {opts.start_timeout:g} s"
                )
            time.sleep(0.02)
    except BaseException as exc:
        stop(servers, opts.stop_timeout)
        if isinstance(exc, ConfigurationFailed):
            exc.output = output_tails(servers)
        raise
    return servers


def stop(servers: list[Server], timeout: float) -> dict[str, int | None]:
    """SIGTERM every process, SIGKILL those still running after ``timeout``; exit statuses."""
    for server in servers:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    statuses: dict[str, int | None] = {}
    for server in servers:
        try:
            statuses[server.name] = server.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)
            statuses[server.name] = None  # killed
    return statuses


def output_tails(servers: list[Server], chars: int = 3000) -> dict[str, str]:
    return {server.name: server.text()[-chars:] for server in servers}


# -- the PostgreSQL databases ---------------------------------------------------------------


def database_url(admin_dsn: str, name: str) -> str:
    """``admin_dsn`` (a ``postgresql://`` URL) with its database replaced by ``name``."""
    parts = urlsplit(admin_dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """A new empty database for the length of the block (its URL); dropped afterwards."""
    name = f"actorflow_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(admin_dsn, name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def postgres_cpu_seconds(admin_dsn: str, database: str) -> float:
    """CPU time so far of the PostgreSQL processes working for ``database``: its backends and
    the server's background processes (WAL writer, checkpointer, ...). Other databases'
    backends are left out. NaN when the server's processes are not visible here (another
    host or a container): a pid counts only if ``/proc/<pid>/comm`` says ``postgres``.
    """
    query = "SELECT pid FROM pg_stat_activity WHERE datname = %s OR datname IS NULL"
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        pids = [row[0] for row in conn.execute(query, (database,))]
    total = 0.0
    for pid in pids:
        try:
            if not Path(f"/proc/{pid}/comm").read_text().startswith("postgres"):
                return math.nan
        except OSError:
            return math.nan
        total += process_cpu_seconds(pid)
    return total


# -- the load ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """Answers that were not 2xx, by status (or by transport error)."""

    answers: Counter[str] = field(default_factory=Counter)

    def total(self) -> int:
        return sum(self.answers.values())


class Client:
    """One load-generating client: a keep-alive connection to each process, opened lazily."""

    def __init__(self, urls: list[str], secret: str, timeout: float) -> None:
        auth = {"authorization": f"Bearer {secret}"}
        self.connections = [Connection(url, auth, timeout=timeout) for url in urls]

    async def post(self, process: int, path: str, body: Any) -> tuple[int, bytes]:
        return await self.connections[process].request(
            "POST", path, orjson.dumps(body), "application/json"
        )

    async def get(self, process: int, path: str) -> tuple[int, bytes]:
        return await self.connections[process].request("GET", path)

    async def aclose(self) -> None:
        for connection in self.connections:
            await connection.aclose()


#: What became of one resume: acknowledged (2xx), refused (another answer: nothing committed),
#: or unknown (the connection failed: it may or may not have been committed).
Outcome = Literal["acked", "refused", "unknown"]


async def _resume(
    client: Client, process: int, token: str, payload: Any, tally: Tally, give_up: float
) -> Outcome:
    """One resume, retried on ``503`` until ``give_up``."""
    body = {"token": token, "payload": payload}
    while True:
        try:
            status, _ = await client.post(process, f"{PREFIX}/hooks/resume", body)
        except TRANSPORT_ERRORS as exc:
            tally.answers[type(exc).__name__] += 1
            return "unknown"
        if 200 <= status < 300:
            return "acked"
        tally.answers[str(status)] += 1
        if status != 503 or time.perf_counter() > give_up:
            return "refused"
        await anyio.sleep(0.001)


async def _in_parallel(
    count: int, job: Callable[[Client], Awaitable[None]], make: Callable[[], Client]
) -> None:
    """``count`` tasks, each running ``job`` with a client of its own."""

    async def one() -> None:
        client = make()
        try:
            await job(client)
        finally:
            await client.aclose()

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one)


async def drive(
    urls: list[str], secret: str, opts: Options, cpu_probe: Callable[[], dict[str, float]]
) -> dict[str, Any]:
    """Start the runs, wait for their hooks, resume serially then concurrently, then end every
    run and check what it received; the figures.

    Raises:
        ConfigurationFailed: hooks did not appear, or runs did not end, within
            ``--phase-timeout``; some runs did not start.
        TimeoutError: starting the runs or the serial phase took longer than that.
    """
    rng = random.Random(0)
    processes = len(urls)
    total = opts.serial + opts.resumes
    tokens = [f"bench:{i}" for i in range(opts.runs)]
    run_ids = [""] * opts.runs
    parallel = min(opts.concurrency, opts.runs)
    ledger = Ledger()

    def make() -> Client:
        return Client(urls, secret, opts.request_timeout)

    # 1. start the runs, spread over the processes
    start_failures = Tally()
    pending = iter(range(opts.runs))

    async def starter(client: Client) -> None:
        for i in pending:
            body = {"workflow": WORKFLOW, "args": [tokens[i]]}
            try:
                status, answer = await client.post(i % processes, f"{PREFIX}/runs", body)
            except TRANSPORT_ERRORS as exc:
                start_failures.answers[type(exc).__name__] += 1
                continue
            if status == 201:
                run_ids[i] = orjson.loads(answer)["run_id"]
            else:
                start_failures.answers[str(status)] += 1

    began = time.perf_counter()
    with anyio.fail_after(opts.phase_timeout):
        await _in_parallel(parallel, starter, make)
    start_seconds = time.perf_counter() - began
    if start_failures.total():
        raise ConfigurationFailed(
            f"{start_failures.total()} of {opts.runs} starts failed: {dict(start_failures.answers)}"
        )

    # 2. every hook visible from every process
    checks = iter([(process, token) for token in tokens for process in range(processes)])

    async def checker(client: Client) -> None:
        for process, token in checks:
            # Polling another process's HTTP route: nothing here could be awaited instead.
            while True:
                status, _ = await client.get(process, f"{PREFIX}/hooks/{token}")
                if status == 200:
                    break
                await anyio.sleep(0.005)

    began = time.perf_counter()
    with anyio.move_on_after(opts.phase_timeout) as scope:
        await _in_parallel(parallel, checker, make)
    if scope.cancelled_caught:
        raise ConfigurationFailed(
            f"not every hook was visible from every process after {opts.phase_timeout:g} s"
        )
    hooks_seconds = time.perf_counter() - began

    def account(sender: object, run: int, payload: int, outcome: Outcome) -> None:
        ledger.account(sender, tokens[run], payload, outcome)

    # 3. serial resumes: one client, one at a time
    serial_tally = Tally()
    serial_ack: list[float] = []

    async def serial(client: Client) -> None:
        give_up = time.perf_counter() + opts.phase_timeout
        for i in range(opts.serial):
            run = i % opts.runs
            process = run % processes if opts.send_to == "owner" else rng.randrange(processes)
            sent = time.perf_counter()
            outcome = await _resume(client, process, tokens[run], {"i": i}, serial_tally, give_up)
            if outcome == "acked":
                serial_ack.append(time.perf_counter() - sent)
            account("serial", run, i, outcome)

    with anyio.fail_after(opts.phase_timeout):
        await _in_parallel(1, serial, make)

    # 4. concurrent resumes, bounded by count and by time
    tally = Tally()
    acks: list[float] = []
    next_index = opts.serial
    deadline = time.perf_counter() + opts.seconds

    async def resumer(client: Client) -> None:
        nonlocal next_index
        sender = id(client)
        while next_index < total and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            run = i % opts.runs
            process = run % processes if opts.send_to == "owner" else rng.randrange(processes)
            sent = time.perf_counter()
            outcome = await _resume(client, process, tokens[run], {"i": i}, tally, deadline)
            if outcome == "acked":
                acks.append(time.perf_counter() - sent)
            account(sender, run, i, outcome)

    cpu_before, client_before = cpu_probe(), time.process_time()
    began = time.perf_counter()
    await _in_parallel(opts.concurrency, resumer, make)
    seconds = time.perf_counter() - began
    cpu = {key: value - cpu_before[key] for key, value in cpu_probe().items()}
    cpu["client"] = time.process_time() - client_before
    cpu["other"] = cpu["machine"] - cpu["servers"] - cpu["postgres"] - cpu["client"]
    sent = next_index - opts.serial

    # 5. end every run with a last payload; each must have received what was acknowledged
    check = await _check_runs(make, opts, processes, tokens, run_ids, ledger, rng)

    return {
        "starts_per_s": opts.runs / start_seconds,
        "hooks_visible_s": hooks_seconds,
        "serial_ack_ms": summary(serial_ack),
        "serial_not_2xx": dict(serial_tally.answers),
        "resumes_sent": sent,
        "resumes_acked": len(acks),
        "seconds": seconds,
        "stopped_by": "count" if sent >= opts.resumes else "time",
        "resumes_per_s": len(acks) / seconds if seconds else math.nan,
        "ack_ms": summary(acks),
        "ack_sketch_ms": sketch(acks),
        "not_2xx": dict(tally.answers),
        "not_2xx_total": tally.total() + serial_tally.total(),
        # CPUs busy during the concurrent phase (CPU seconds per second), by whom.
        "cpu_share": {key: value / seconds if seconds else math.nan for key, value in cpu.items()},
        "check": check,
    }


@dataclass
class Ledger:
    """Which payload ids were acknowledged to which run's token, in which order per sender,
    and which were sent without an answer (their fate unknown)."""

    acked: dict[str, list[int]] = field(default_factory=dict)
    unknown: dict[str, set[int]] = field(default_factory=dict)
    order: dict[tuple[object, str], list[int]] = field(default_factory=dict)

    def account(self, sender: object, token: str, payload: int, outcome: Outcome) -> None:
        if outcome == "acked":
            self.acked.setdefault(token, []).append(payload)
            self.order.setdefault((sender, token), []).append(payload)
        elif outcome == "unknown":
            self.unknown.setdefault(token, set()).add(payload)


async def _check_runs(
    make: Callable[[], Client],
    opts: Options,
    processes: int,
    tokens: list[str],
    run_ids: list[str],
    ledger: Ledger,
    rng: random.Random,
) -> dict[str, Any]:
    """Send each run its last payload, wait for it to complete, and check the ids it received
    against the acknowledgements: each acknowledged id exactly once (see the module).

    Raises:
        ConfigurationFailed: runs did not end within ``--phase-timeout``.
    """
    tally = Tally()
    problems: list[dict[str, Any]] = []
    results: dict[str, list[Any]] = {}
    pending = iter(range(opts.runs))

    async def finisher(client: Client) -> None:
        give_up = time.perf_counter() + opts.phase_timeout
        for run in pending:
            process = run % processes if opts.send_to == "owner" else rng.randrange(processes)
            outcome = await _resume(client, process, tokens[run], {"last": True}, tally, give_up)
            if outcome != "acked":
                problems.append({"run": run, "problem": "the last payload was not acknowledged"})
                continue
            while True:  # polling the run's status over HTTP: nothing to await instead
                status, answer = await client.get(run % processes, f"{PREFIX}/runs/{run_ids[run]}")
                described = orjson.loads(answer) if status == 200 else {}
                if described.get("status") not in (None, "pending", "running"):
                    break
                await anyio.sleep(0.005)
            got = described.get("result")
            if described["status"] != "completed" or not isinstance(got, list):
                problems.append(
                    {"run": run, "run_id": run_ids[run], "status": described["status"],
                     "result": got, "error": described.get("error")}
                )  # fmt: skip
            else:
                results[tokens[run]] = got

    with anyio.move_on_after(opts.phase_timeout) as scope:
        await _in_parallel(min(opts.concurrency, opts.runs), finisher, make)
    if scope.cancelled_caught:
        raise ConfigurationFailed(
            f"runs did not end within {opts.phase_timeout:g} s of their last payload"
        )
    verified, violation = 0, None
    try:
        verified = check_exactly_once(
            {token: ledger.acked.get(token, []) for token in results},
            results,
            order={key: ids for key, ids in ledger.order.items() if key[1] in results},
            unknown=ledger.unknown,
        )
    except NotExactlyOnce as exc:
        violation = str(exc)
    return {
        "runs": opts.runs,
        "runs_completed": len(results),
        "ids_acknowledged": sum(len(ids) for ids in ledger.acked.values()),
        "ids_unknown": sum(len(ids) for ids in ledger.unknown.values()),
        "ids_verified": verified,
        "violation": violation,
        "problems": len(problems),
        "examples": problems[:10],
        "not_2xx": dict(tally.answers),
    }


# -- one configuration ----------------------------------------------------------------------


def measure(
    store: str, processes: int, work: Path, opts: Options, admin_dsn: str
) -> dict[str, Any]:
    """Serve, drive and stop one configuration; a failure is returned, not raised."""
    label = f"{store}-{processes}"
    secret = secrets.token_urlsafe(24)
    result: dict[str, Any] = {"store": store, "processes": processes}
    servers: list[Server] = []
    try:
        with store_options(store, admin_dsn) as (store_args, database):
            if database:
                result["postgres_settings"] = server_durability(store_args[1])
            try:
                servers = launch(label, store_args, work, processes, opts, secret)
                urls = [server.url for server in servers]

                def cpu_probe() -> dict[str, float]:
                    # Read just outside the timed window; a blocking query is fine there.
                    return {
                        "servers": sum(server.cpu_seconds() for server in servers),
                        "postgres": postgres_cpu_seconds(admin_dsn, database) if database else 0.0,
                        "machine": machine_busy_seconds(),
                    }

                result.update(
                    anyio.run(partial(drive, urls, secret, opts, cpu_probe), backend="asyncio")
                )
                died = [s for s in servers if s.proc.poll() is not None]
                if died:  # the figures stay in the JSON, but they are no measurement
                    raise ConfigurationFailed(
                        ", ".join(f"{s.name} exited ({s.proc.returncode})" for s in died)
                        + " during the measurement"
                    )
                check = result["check"]
                if check["problems"]:
                    raise ConfigurationFailed(
                        f"check: {check['problems']} of {check['runs']} runs did not complete "
                        f"after their last payload: {check['examples'][:3]}"
                    )
                if check["violation"]:
                    raise ConfigurationFailed(f"check: {check['violation']}")
                result["status"] = "ok"
            finally:
                if servers:
                    result["exit_statuses"] = stop(servers, opts.stop_timeout)
    except Exception as exc:
        # Whatever went wrong (a process that died mid-run, a database that could not be
        # created), report it and go on with the next configuration.
        leaf = _first_leaf(exc)
        result["status"] = "failed"
        result["error"] = f"{type(leaf).__name__}: {leaf or 'a bounded wait ran out'}"
        if not isinstance(exc, ConfigurationFailed):
            result["traceback"] = "".join(traceback.format_exception(exc))
        result["output"] = getattr(exc, "output", None) or output_tails(servers)
    return result


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


@contextmanager
def store_options(store: str, admin_dsn: str) -> Iterator[tuple[list[str], str]]:
    """The ``serve`` options naming the store, and the database's name (empty for the file
    log): nothing extra for the file log (each process has its own ``--data-dir``),
    ``--store URL`` of a fresh database for PostgreSQL."""
    if store == "file":
        yield [], ""
        return
    with fresh_database(admin_dsn) as url:
        yield ["--store", url], urlsplit(url).path.lstrip("/")


# -- report ---------------------------------------------------------------------------------


def _resumes_per_s(r: dict[str, Any]) -> float:
    return float(r["resumes_per_s"])


def _ack_p50(r: dict[str, Any]) -> float:
    return float(r["ack_ms"].get("p50", math.nan))


def _ack_p99(r: dict[str, Any]) -> float:
    return float(r["ack_ms"].get("p99", math.nan))


def _serial_p50(r: dict[str, Any]) -> float:
    return float(r["serial_ack_ms"].get("p50", math.nan))


#: The figures given as ratios against the file log, and where each is read from a result.
RATIOS: dict[str, Callable[[dict[str, Any]], float]] = {
    "resumes_per_s": _resumes_per_s,
    "ack_p50_ms": _ack_p50,
    "ack_p99_ms": _ack_p99,
    "serial_ack_p50_ms": _serial_p50,
}


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Each PostgreSQL figure over the file log's (same run), under ``vs_file``."""
    base = next((r for r in results if r["store"] == "file" and r["status"] == "ok"), None)
    for result in results:
        if result["store"] == "file" or result["status"] != "ok" or base is None:
            continue
        result["vs_file"] = {
            name: _ratio(figure(result), figure(base)) for name, figure in RATIOS.items()
        }


def _ratio(value: float, base: float) -> float:
    return value / base if base and not math.isnan(base) else math.nan


def _fmt(value: float, digits: int = 2) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def print_table(results: list[dict[str, Any]], opts: Options) -> None:
    print(
        f"hook round trip over HTTP: {opts.runs} runs, {opts.serial} serial resumes, then "
        f"{opts.concurrency} clients for up to {opts.resumes:,} resumes or {opts.seconds:g} s; "
        f"each resume sent to {'a random process' if opts.send_to == 'random' else 'its owner'}; "
        f"durability={opts.durability}, worker={opts.worker}, {os.cpu_count()} CPUs; "
        "'x file' = this figure / the file log's"
    )
    header = (
        f"{'configuration':<14} {'starts/s':>9} {'resumes/s':>10} {'x file':>7} "
        f"{'ack p50':>8} {'x file':>7} {'ack p99':>8} {'x file':>7} "
        f"{'serial p50':>10} {'x file':>7} {'not 2xx':>8} {'cpu srv/pg/cli/other':>21}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        name = f"{r['store']} x{r['processes']}"
        if "resumes_per_s" not in r:
            print(f"{name:<14} FAILED: {r['error']}")
            continue
        vs = r.get("vs_file", {})
        cpu = "/".join(
            _fmt(max(r["cpu_share"][key], 0.0), 1)
            for key in ("servers", "postgres", "client", "other")
        )
        print(
            f"{name:<14} {_fmt(r['starts_per_s']):>9} {_fmt(r['resumes_per_s']):>10} "
            f"{_fmt(vs.get('resumes_per_s', math.nan)):>7} "
            f"{_fmt(_ack_p50(r)):>8} {_fmt(vs.get('ack_p50_ms', math.nan)):>7} "
            f"{_fmt(_ack_p99(r)):>8} {_fmt(vs.get('ack_p99_ms', math.nan)):>7} "
            f"{_fmt(_serial_p50(r), 3):>10} "
            f"{_fmt(vs.get('serial_ack_p50_ms', math.nan)):>7} "
            f"{r['not_2xx_total']:>8} {cpu:>21}"
        )
    print(
        f"(latencies in ms; cpu: CPUs busy during the concurrent phase, of {os.cpu_count()}: the "
        "serve processes, PostgreSQL, this client, and other load on the machine)"
    )
    for r in results:
        if r["status"] != "ok" and "resumes_per_s" in r:
            print(f"{r['store']} x{r['processes']}: FAILED (figures above not valid): {r['error']}")
        other = r.get("cpu_share", {}).get("other", math.nan)
        if other > OTHER_LOAD_WARNING:
            print(
                f"{r['store']} x{r['processes']}: WARNING: {other:.1f} CPUs were busy outside the "
                "benchmark during the concurrent phase: its figures (and ratios against them) "
                "are disturbed; run again on a quieter machine"
            )
        if "not_2xx_total" in r and r["not_2xx_total"]:
            print(
                f"{r['store']} x{r['processes']}: answers not 2xx: serial "
                f"{r['serial_not_2xx'] or 0}, concurrent {r['not_2xx']}"
            )
        if "postgres_settings" in r:
            print(
                f"{r['store']} x{r['processes']}: PostgreSQL server: "
                + ", ".join(f"{name}={value}" for name, value in r["postgres_settings"].items())
            )
        odd = {k: v for k, v in r.get("exit_statuses", {}).items() if v != 0}
        if odd:
            print(
                f"{r['store']} x{r['processes']}: exit status at the stop (None: SIGKILLed): {odd}"
            )
        if "check" in r:
            check = r["check"]
            held = check["violation"] is None and not check["problems"]
            print(
                f"{r['store']} x{r['processes']}: check: "
                + (f"{check['ids_verified']:,} acknowledged payload ids, each received exactly "
                   f"once by its run ({check['runs_completed']} runs; "
                   f"{check['ids_unknown']} ids of unknown fate)" if held else
                   f"FAILED: {check['violation'] or check['examples'][:3]}")
            )  # fmt: skip
        if "resumes_acked" in r and r["resumes_acked"] < r["resumes_sent"]:
            print(
                f"{r['store']} x{r['processes']}: {r['resumes_sent'] - r['resumes_acked']} of "
                f"{r['resumes_sent']} concurrent resumes were never acknowledged"
            )


def _finite(value: Any) -> Any:
    """NaN becomes null, so the JSON is standard JSON."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _terminated(signum: int, frame: FrameType | None) -> NoReturn:
    # SIGTERM unwinds like Ctrl-C: the processes are stopped and the databases dropped.
    raise KeyboardInterrupt


def _processes(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1,2,3, not {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("process counts must be 1 or more")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.postgres_processes",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument(
        "--dsn",
        default=DEFAULT_DSN,
        help=f"admin connection (postgresql:// URL) that creates and drops the databases "
        f"(default {DEFAULT_DSN})",
    )
    p.add_argument("--processes", type=_processes, default=[1, 2, 3], help="default 1,2,3")
    p.add_argument("--quick", action="store_true", help="a smoke run: small sizes, a few seconds")
    p.add_argument("--runs", type=int, help="runs waiting on hooks (default 300, quick 40)")
    p.add_argument("--serial", type=int, help="resumes sent one at a time (default 200, quick 40)")
    p.add_argument(
        "--resumes", type=int, help="concurrent resumes at most (default 30,000, quick 2,000)"
    )
    p.add_argument(
        "--seconds", type=float, help="concurrent phase at most, seconds (default 10, quick 1.5)"
    )
    p.add_argument("--concurrency", type=int, help="concurrent HTTP clients (default 32, quick 16)")
    p.add_argument(
        "--send-to",
        choices=("random", "owner"),
        default="random",
        help="where each resume goes: a random process (default), or the one that started "
        "the run (a diagnostic: no resume needs routing to another process)",
    )
    p.add_argument("--durability", choices=("fsync", "none"), default="fsync")
    p.add_argument("--worker", choices=("asyncio", "trio"), default="asyncio")
    p.add_argument("--start-timeout", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--stop-timeout", type=float, default=20.0, help="seconds (default 20)")
    p.add_argument(
        "--phase-timeout",
        type=float,
        default=60.0,
        help="seconds each untimed phase may take: starts, hooks visible, serial, check "
        "(default 60)",
    )
    p.add_argument(
        "--request-timeout", type=float, default=30.0, help="seconds per HTTP request (default 30)"
    )
    p.add_argument("--work-dir", type=Path, default=None, help="where the file logs go")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    quick = args.quick
    opts = Options(
        runs=args.runs or (40 if quick else 300),
        serial=args.serial if args.serial is not None else (40 if quick else 200),
        resumes=args.resumes if args.resumes is not None else (2000 if quick else 30_000),
        seconds=args.seconds or (1.5 if quick else 10.0),
        concurrency=args.concurrency or (16 if quick else 32),
        durability=args.durability,
        worker=args.worker,
        start_timeout=args.start_timeout,
        stop_timeout=args.stop_timeout,
        phase_timeout=args.phase_timeout,
        request_timeout=args.request_timeout,
        send_to=args.send_to,
    )
    if opts.runs < 1 or opts.serial < 0 or opts.resumes < 0 or opts.concurrency < 1:
        p.error("--runs and --concurrency must be 1 or more, --serial and --resumes 0 or more")
    if not args.dsn.startswith(("postgresql://", "postgres://")):
        p.error("--dsn must be a postgresql:// URL")
    if not ACTORFLOW.exists():
        p.error(f"{ACTORFLOW} is missing: run ./scripts/setup")

    signal.signal(signal.SIGTERM, _terminated)
    load_before = os.getloadavg()
    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="actorflow-pg-processes-", dir=args.work_dir))
    if opts.durability == "fsync":
        try:
            require_disk(work)
        except MemoryBackedError as exc:
            shutil.rmtree(work, ignore_errors=True)
            p.error(str(exc))
    results: list[dict[str, Any]] = []
    try:
        for store, count in [("file", 1), *(("postgres", n) for n in args.processes)]:
            print(f"measuring {store} x{count} ...", file=sys.stderr, flush=True)
            result = measure(store, count, work, opts, args.dsn)
            if result["status"] != "ok":
                print(f"{store} x{count} FAILED: {result['error']}", file=sys.stderr)
                for name, text in result["output"].items():
                    print(f"--- output of {name} (last lines) ---\n{text}", file=sys.stderr)
            results.append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    add_ratios(results)
    print_table(results, opts)
    report = {
        "benchmark": "postgres_processes",
        "command": " ".join(["python -m benchmarks.postgres_processes", *(argv or sys.argv[1:])]),
        "options": asdict(opts),
        "quick": quick,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "wall_seconds": time.perf_counter() - began,
        "results": results,
    }
    text = json.dumps(_finite(report), indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the processes were stopped, the databases dropped", file=sys.stderr)
        sys.exit(130)
