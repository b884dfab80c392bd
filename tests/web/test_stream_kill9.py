"""Streams under kill -9: a real ``actorflow serve`` (fsync on) killed with SIGKILL at random
moments while senders feed workflows that stream, steps stream on their own, and readers
follow every stream over HTTP (Server-Sent Events), reconnecting with ``?start=N`` after each
kill; restarted on the same data directory, alternately on the asyncio and trio workers.

Checked by chunk id: each reader's indices run 0, 1, 2, ... with no gap and no repeat across
its reconnections; each acknowledged payload's chunk is in its run's stream exactly once, and
one sender's chunks in the order the sender had them acknowledged; each step's stream holds
its ids 0..n-1 once each, in order, however many times the step was cut off and run again.
"""

from __future__ import annotations

import os
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import h11
import httpx
import orjson
import pytest
from tests.fixtures import exactly_once
from tests.fixtures.server_process import SECRET, ServerProcess, free_port
from tests.web.test_kill9 import serving
from tests.web.test_run_streams import Sse

from actorflow.cli import main

pytestmark = pytest.mark.slow

PREFIX = "/.well-known/workflow/v1"
AUTH = {"authorization": f"Bearer {SECRET}"}
KILLS = 12
SENDERS = 8
STREAMS = 4
SPELLERS = 3
SPELL = 400


class Sent:
    """What the senders had acknowledged, and what the readers read."""

    def __init__(self) -> None:
        self.acked: dict[str, list[str]] = defaultdict(list)
        self.order: dict[tuple[int, str], list[str]] = defaultdict(list)
        self.read: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self.reconnects = 0
        self.done = False


async def send(client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> httpx.Response:
    """Until a 2xx (a 404 for a hook the restarting server has not rebuilt is retried too)."""
    while True:
        try:
            response = await client.request(method, path, **kw)
        except httpx.TransportError:
            await anyio.sleep(0.02)
            continue
        if response.is_success:
            return response
        assert response.status_code in (404, 503), response.text
        await anyio.sleep(0.02)


async def sender(client: httpx.AsyncClient, sent: Sent, me: int, rng: random.Random) -> None:
    k = 0
    while not sent.done:
        name = f"r{rng.randrange(STREAMS)}"
        payload_id = f"{me}.{k}"
        k += 1
        await send(client, "POST", f"{PREFIX}/hooks/resume", headers=AUTH, json={
            "token": f"stream:{name}", "payload": {"id": payload_id},
            "idempotency_key": payload_id,
        })  # fmt: skip
        sent.acked[name].append(payload_id)
        sent.order[(me, name)].append(payload_id)


async def reader(base: str, sent: Sent, name: str, run_id: str, namespace: str) -> None:
    """Follow one stream to its end, reconnecting where it stopped."""
    got = sent.read[name]
    url = f"{PREFIX}/runs/{run_id}/streams/{namespace}"
    while True:
        start = got[-1][0] + 1 if got else 0
        try:
            async with Sse(base, f"{url}?start={start}", AUTH) as response:
                if response.status != 200:
                    await anyio.sleep(0.02)
                    continue
                while (event := await response.event()) is not None:
                    if event.get("event") == "chunk":
                        got.append((int(event["id"]), orjson.loads(event["data"])["id"]))
                    elif event.get("event") == "end":
                        return
        except (OSError, h11.RemoteProtocolError, anyio.BrokenResourceError, anyio.EndOfStream):
            pass
        sent.reconnects += 1
        await anyio.sleep(0.02)


def test_every_acknowledged_chunk_is_read_once_in_order_across_kill_9(tmp_path: Path) -> None:
    began = time.monotonic()
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    server = ServerProcess(tmp_path / "data", tmp_path / "out.log", bind=f"127.0.0.1:{free_port()}")
    sent = Sent()
    runs: dict[str, str] = {}

    async def go() -> None:
        base = server.start("asyncio")
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for i in range(STREAMS):
                r = await send(client, "POST", f"{PREFIX}/runs", headers=AUTH,
                               json={"workflow": "streamer", "args": [f"r{i}"]})  # fmt: skip
                runs[f"r{i}"] = r.json()["run_id"]
            for i in range(SPELLERS):
                r = await send(client, "POST", f"{PREFIX}/runs", headers=AUTH,
                               json={"workflow": "speller", "args": [f"s{i}", SPELL]})  # fmt: skip
                runs[f"s{i}"] = r.json()["run_id"]
            async with anyio.create_task_group() as readers:
                for name, run_id in runs.items():
                    namespace = "step" if name.startswith("s") else "default"
                    readers.start_soon(reader, base, sent, name, run_id, namespace)
                async with anyio.create_task_group() as senders:
                    for me in range(SENDERS):
                        senders.start_soon(sender, client, sent, me, rng)
                    for incarnation in range(1, KILLS + 1):
                        await anyio.sleep(rng.uniform(0.3, 1.0))
                        server.kill()
                        server.launch("trio" if incarnation % 2 else "asyncio")
                        await serving(server)
                    sent.done = True
                with anyio.fail_after(60):
                    for i in range(STREAMS):
                        await send(client, "POST", f"{PREFIX}/hooks/resume", headers=AUTH, json={
                            "token": f"stream:r{i}", "payload": {"stop": True},
                            "idempotency_key": f"stop{i}",
                        })  # fmt: skip

    try:
        anyio.run(go, backend="asyncio")
    finally:
        code = server.stop() if server.proc is not None and server.proc.poll() is None else None
    assert code == 0, server.text()[-5000:]
    assert main(["log", "verify", str(tmp_path / "data")]) == 0

    for name, got in sent.read.items():
        assert [index for index, _ in got] == list(range(len(got))), f"{name}: gap or repeat"
    results = {name: [pid for _, pid in sent.read[name]] for name in runs if name.startswith("r")}
    checked = exactly_once.check_exactly_once(
        {name: sent.acked.get(name, []) for name in results}, results, order=sent.order,
        context=f"seed {seed}",
    )  # fmt: skip
    for i in range(SPELLERS):
        assert [pid for _, pid in sent.read[f"s{i}"]] == [f"s{i}:{j}" for j in range(SPELL)]
    print(
        f"\nstreams under kill -9: seed {seed}, {KILLS} kills, {checked} acknowledged chunks "
        f"checked by id, {SPELLERS * SPELL} step chunks, {sent.reconnects} reader reconnections, "
        f"{time.monotonic() - began:.1f}s"
    )
