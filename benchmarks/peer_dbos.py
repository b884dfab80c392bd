"""Scenario "peer": the same hook round trip against DBOS with its SQLite backend, if installed.

DBOS is never a dependency: install it yourself (``pip install dbos``) to see the comparison.
Both sides run the same shape on the same disk in the same harness run: ``n`` workflows that
each wait for one message, the first ``serial`` resumed one at a time, the rest by
``concurrency`` concurrent senders. DBOS side: ``@DBOS.workflow() async def``, ``await
DBOS.recv_async(topic)`` inside, ``await DBOS.send_async(workflow_id, message, topic)`` outside,
with DBOS's own SQLite defaults (its system database is a file under the scratch folder) except
the notification polling interval, lowered from 1 s to ``POLL_SECONDS`` in its favour. It runs
in a child interpreter (DBOS is a process-wide singleton) on asyncio whatever ``--backend`` says.
The actorflow side is ``roundtrip.hook_round_trip`` with the same sizes, fsync on.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import anyio

import actorflow as af

from .child import run_child
from .roundtrip import RoundTrip, hook_round_trip
from .scenario import Config, ScenarioResult
from .stats import percentile, sketch, summary
from .workflows import hook_once, observations

NAME = "peer"
#: DBOS on SQLite has no LISTEN/NOTIFY: a listener thread polls for messages at this interval.
#: Its default is 1.0 s (send->recv then takes about a second); 10 ms is its fast setting.
POLL_SECONDS = 0.01
TITLE = "peer: DBOS (SQLite) recv/send vs actorflow, same round trip"


def available() -> bool:
    """True when ``dbos`` can be imported here."""
    return importlib.util.find_spec("dbos") is not None


def measure(n: int, serial: int, concurrency: int, work_dir: str, poll: float) -> dict[str, Any]:
    """Child entry point: the DBOS round trip."""
    import asyncio

    from dbos import DBOS  # type: ignore[import-not-found,unused-ignore]

    seen: dict[str, float] = {}
    waiters: dict[str, asyncio.Event] = {}
    ready: set[str] = set()

    @DBOS.workflow(name="actorflow_bench_wait")  # type: ignore[misc,untyped-decorator,unused-ignore]
    async def wait_for_message(key: str) -> str:
        ready.add(key)
        message = await DBOS.recv_async("bench", timeout_seconds=300)
        seen[message["k"]] = time.perf_counter()
        waiter = waiters.get(message["k"])
        if waiter is not None:
            waiter.set()
        return key

    db = Path(work_dir) / "dbos.sqlite"
    DBOS(config={"name": "actorflow-bench-peer", "system_database_url": f"sqlite:///{db}",
                 "run_admin_server": False, "console_log_level": "WARNING",
                 "notification_listener_polling_interval_sec": poll})  # fmt: skip
    DBOS.launch()

    async def main() -> dict[str, Any]:
        keys = [f"peer:{i}" for i in range(n)]
        handles: list[Any] = [None] * n
        out: dict[str, Any] = {}
        pending = iter(range(n))

        async def starter() -> None:
            for i in pending:
                handles[i] = await DBOS.start_workflow_async(wait_for_message, keys[i])

        began = time.perf_counter()
        await asyncio.gather(*(starter() for _ in range(min(concurrency, n))))
        out["start_seconds"] = time.perf_counter() - began
        deadline = time.perf_counter() + 120
        while len(ready) < n and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)  # let each workflow get from "ready" into recv
        wids = [h.get_workflow_id() for h in handles]
        serial_observed: list[float] = []
        serial_ack: list[float] = []
        for i in range(serial):
            waiters[keys[i]] = asyncio.Event()
            sent = time.perf_counter()
            await DBOS.send_async(wids[i], {"k": keys[i]}, "bench")
            acked = time.perf_counter()
            await waiters[keys[i]].wait()
            await handles[i].get_result()
            serial_ack.append(acked - sent)
            serial_observed.append(seen[keys[i]] - sent)
        sent_at: dict[int, float] = {}
        acked_at: dict[int, float] = {}
        queue = iter(range(serial, n))

        async def sender() -> None:
            for i in queue:
                sent_at[i] = time.perf_counter()
                await DBOS.send_async(wids[i], {"k": keys[i]}, "bench")
                acked_at[i] = time.perf_counter()

        began = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(min(concurrency, max(n - serial, 1)))))
        last_ack = time.perf_counter()
        for i in range(serial, n):
            await handles[i].get_result()
        out.update(
            serial_observed=serial_observed,
            serial_ack=serial_ack,
            concurrent_observed=[seen[keys[i]] - sent_at[i] for i in range(serial, n)],
            acked_seconds=last_ack - began,
            completed_seconds=time.perf_counter() - began,
        )
        return out

    try:
        return asyncio.run(main())
    finally:
        DBOS.destroy()


async def _actorflow(cfg: Config, n: int, serial: int) -> RoundTrip:
    observations.clear()
    data = cfg.scratch("peer-actorflow") / "data"
    async with af.Runtime(data, workflows=[hook_once], durability="fsync") as rt:
        return await hook_round_trip(rt, n=n, serial=serial, concurrency=cfg.concurrency,
                                     tag="peer-af")  # fmt: skip


def run(cfg: Config) -> ScenarioResult:
    """The comparison, or a skip line when DBOS is not installed."""
    if not available():
        return ScenarioResult(
            NAME, TITLE,
            skipped="dbos is not installed (optional, never a dependency: `pip install dbos` "
            "to compare against DBOS's SQLite backend)",
        )  # fmt: skip
    n, serial = (300, 50) if cfg.quick else (2_000, 200)
    res = ScenarioResult(NAME, TITLE)
    res.params = {"runs": n, "serial_resumes": serial, "concurrency": cfg.concurrency,
                  "dbos_backend": "SQLite (DBOS defaults)", "actorflow_durability": "fsync",
                  "dbos_notification_polling_s": POLL_SECONDS}  # fmt: skip
    work = cfg.scratch("peer-dbos")
    peer = run_child("peer_dbos", "measure", 1800.0, n=n, serial=serial,
                     concurrency=cfg.concurrency, work_dir=str(work), poll=POLL_SECONDS)  # fmt: skip
    ours = anyio.run(_actorflow, cfg, n, serial, backend=cfg.backend)
    c = cfg.concurrency
    peer_rate = (n - serial) / peer["acked_seconds"]
    peer_p50 = percentile(peer["serial_observed"], 50)
    our_p50 = percentile(ours.serial_observed, 50)
    res.add("DBOS starts/s", n / peer["start_seconds"], "/s")
    res.add("actorflow starts/s", ours.starts_per_s, "/s",
            ours.starts_per_s / (n / peer["start_seconds"]), "DBOS")  # fmt: skip
    res.add("DBOS send->recv observed p50, 1 sender", peer_p50 * 1000, "ms")
    res.add("actorflow resume->observed p50, 1 resumer", our_p50 * 1000, "ms",
            our_p50 / peer_p50, "DBOS (lower is better)", durability="fsync")  # fmt: skip
    res.add(f"DBOS durable sends/s, {c} senders", peer_rate, "/s")
    res.add(f"actorflow durable resumes/s, {c} resumers", ours.resumes_per_s, "/s",
            ours.resumes_per_s / peer_rate, "DBOS (higher is better)", durability="fsync")  # fmt: skip
    res.samples_ms = {"DBOS, 1 sender": sketch(peer["serial_observed"]),
                      "actorflow, 1 resumer": sketch(ours.serial_observed)}  # fmt: skip
    res.extra = {
        "dbos_serial_observed_ms": summary(peer["serial_observed"]),
        "dbos_concurrent_observed_ms": summary(peer["concurrent_observed"]),
        "actorflow_serial_observed_ms": summary(ours.serial_observed),
        "actorflow_concurrent_observed_ms": summary(ours.concurrent_observed),
    }
    return res
