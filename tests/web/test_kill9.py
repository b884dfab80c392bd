"""Kill -9 under load: a real ``actorflow serve`` process (fsync on) killed with SIGKILL at
random moments, 40 times (the issue asks for 20 at least), while concurrent clients start runs,
resume hooks and post to webhooks; restarted each time on the same data directory, alternately
on the asyncio and the trio worker; about 45 s.

Clients act as real senders: every payload carries a unique id, and a request that got no 2xx
(connection refused or reset by the kill, 503) is sent again with the same idempotency key
until it is acknowledged. Starting a run has no idempotency key, so a start that got no answer
is sent again too: a duplicate run can appear, and it fails at once with ``HookConflictError``
on the chosen token, which the first run keeps. The run that owns ``collect:<name>`` is the one
a client addresses, and the one whose result is checked.

At the end every run is stopped, and each run's result (the ids it received, in log order)
must hold every acknowledged payload exactly once, no payload twice, and each sender's payloads
in the order they were acknowledged. The log must verify, every run must have ended, and every
run besides the owners must be a duplicate that failed on the token.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from tests.conftest import read_events
from tests.fixtures import exactly_once
from tests.fixtures.server_process import SECRET, ServerProcess, free_port

from actorflow.cli import main

pytestmark = pytest.mark.slow

PREFIX = "/.well-known/workflow/v1"
AUTH = {"authorization": f"Bearer {SECRET}"}

KILLS = 40
SENDERS = 16
PAYLOADS_PER_RUN = 12
#: The share of kills that land while the server is still starting (recovering).
KILL_DURING_START = 0.2


class Unexpected(Exception):
    """A response no retry can explain (a 4xx, a 5xx other than 503): the test fails."""


@dataclass
class Ledger:
    """What the clients sent and what the server acknowledged."""

    acked: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: (sender, run name) -> ids in the order the sender got them acknowledged.
    order: dict[tuple[int, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    names: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    unanswered: Counter[str] = field(default_factory=Counter)
    webhook_urls: dict[str, str] = field(default_factory=dict)


class Clients:
    """The senders, sharing one connection pool and one ledger."""

    def __init__(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        self.client = client
        self.rng = rng
        self.ledger = Ledger()
        self.done = False

    async def send(
        self, what: str, method: str, path: str, *, retry_404: bool = False, **kw: Any
    ) -> httpx.Response:
        """Send until a 2xx (or a 404 the caller handles): a sender's retry loop."""
        while True:
            try:
                response = await self.client.request(method, self.url_for(path), **kw)
            except httpx.TransportError as exc:
                # Refused while the server is down, reset by the kill, or a dead pooled
                # connection: nothing says whether it arrived, so send it again.
                self.ledger.unanswered[f"{what}: {type(exc).__name__}"] += 1
                await anyio.sleep(0.02)
                continue
            if response.is_success or (response.status_code == 404 and retry_404):
                return response
            if response.status_code == 503:
                self.ledger.unanswered[f"{what}: 503"] += 1
                await anyio.sleep(0.02)
                continue
            message = f"{what} {method} {path}: {response.status_code} {response.text[:300]}"
            self.ledger.unexpected.append(message)
            raise Unexpected(message)

    def url_for(self, path: str) -> str:
        """Where to send a request for ``path`` (relative to the client's one server here)."""
        return path

    async def start_run(self, name: str) -> None:
        await self.send(
            "start", "POST", f"{PREFIX}/runs", headers=AUTH,
            json={"workflow": "collector", "args": [name]},
        )  # fmt: skip

    async def owner(self, name: str) -> str:
        """The run that owns ``collect:<name>`` (waits while a restarted server rebuilds it)."""
        for _ in range(1500):
            found = await self.send(
                "owner", "GET", f"{PREFIX}/hooks/collect:{name}", headers=AUTH, retry_404=True
            )
            if found.status_code == 200:
                return str(found.json()["run_id"])
            await anyio.sleep(0.02)
        raise Unexpected(f"no run owns collect:{name}")

    async def webhook_path(self, name: str) -> str:
        cached = self.ledger.webhook_urls.get(name)
        if cached is not None:
            return cached
        run_id = await self.owner(name)
        for _ in range(1500):
            described = await self.send("describe", "GET", f"{PREFIX}/runs/{run_id}", headers=AUTH)
            urls = [h["url"] for h in described.json()["hooks"] if h["is_webhook"]]
            if urls:
                path = httpx.URL(urls[0]).path
                self.ledger.webhook_urls[name] = path
                return path
            await anyio.sleep(0.02)
        raise Unexpected(f"run {run_id} shows no webhook")

    async def deliver(self, sender: int, name: str, payload_id: str) -> None:
        """One payload, over the hook or the webhook, retried until acknowledged."""
        body = {"id": payload_id}
        for _ in range(1500):
            if self.rng.random() < 0.5:
                got = await self.send(
                    "resume", "POST", f"{PREFIX}/hooks/resume", headers=AUTH, retry_404=True,
                    json={"token": f"collect:{name}", "payload": body,
                          "idempotency_key": payload_id},
                )  # fmt: skip
            else:
                got = await self.send(
                    "webhook", "POST", await self.webhook_path(name), retry_404=True,
                    content=orjson.dumps(body),
                    headers={"idempotency-key": payload_id, "content-type": "application/json"},
                )  # fmt: skip
                if got.status_code == 404:
                    # The webhook was seen before its hook_created was durable and the kill
                    # lost it; replay made a new one (nothing was delivered to the old one).
                    self.ledger.webhook_urls.pop(name, None)
                    self.ledger.unanswered["webhook: 404, URL looked up again"] += 1
            if got.status_code != 404:
                self.ledger.acked[name].append(payload_id)
                self.ledger.order[(sender, name)].append(payload_id)
                return
            # 404 on the hook: the restarted server has not rebuilt the run yet.
            await anyio.sleep(0.02)
        raise Unexpected(f"payload {payload_id} for {name} was never accepted")

    async def stop_all(self, owners: dict[str, str], results: dict[str, list[str]]) -> None:
        """Stop every run (``{"stop": true}`` on its hook) and read back what it received.

        Fills ``owners`` (name -> the run that owns ``collect:<name>``) and ``results``.
        """
        for name in self.ledger.names:
            owners[name] = await self.owner(name)
            await self.send(
                "stop", "POST", f"{PREFIX}/hooks/resume", headers=AUTH,
                json={"token": f"collect:{name}", "payload": {"stop": True},
                      "idempotency_key": f"stop:{name}"},
            )  # fmt: skip
        for name, run_id in owners.items():
            while True:
                run = (
                    await self.send("result", "GET", f"{PREFIX}/runs/{run_id}", headers=AUTH)
                ).json()
                if run["status"] not in ("running", "pending"):
                    break
                await anyio.sleep(0.02)
            assert run["status"] == "completed", run
            results[name] = run["result"]

    async def sender(self, sender: int) -> None:
        k = 0
        while not self.done:
            name = f"s{sender}-{k}"
            k += 1
            await self.start_run(name)
            self.ledger.names.append(name)
            for j in range(PAYLOADS_PER_RUN):
                if self.done:
                    break
                # Half the payloads go to another sender's run: concurrent senders per run.
                target = name if self.rng.random() < 0.5 else self.rng.choice(self.ledger.names)
                await self.deliver(sender, target, f"{sender}.{k}.{j}")


def check_exactly_once(ledger: Ledger, results: dict[str, list[str]], seed: int) -> int:
    """Every acknowledged payload exactly once, in its run's result; nothing twice anywhere;
    one sender's payloads to one run in the order they were acknowledged. Returns how many
    acknowledged payloads were checked (see ``tests/fixtures/exactly_once.py``)."""
    return exactly_once.check_exactly_once(
        {name: ledger.acked.get(name, []) for name in ledger.names},
        results,
        order=ledger.order,
        context=f"seed {seed}",
    )


async def serving(server: ServerProcess) -> None:
    """Wait (polling its output, at most 30 s) until a launched server serves."""
    for _ in range(3000):
        if server.ready() is not None:
            return
        await anyio.sleep(0.01)
    raise AssertionError(f"the server did not start:\n{server.text()[-5000:]}")


def test_no_acknowledged_payload_is_lost_or_doubled_across_kill_9(tmp_path: Path) -> None:
    began = time.monotonic()
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    server = ServerProcess(
        tmp_path / "data", tmp_path / "server.log", bind=f"127.0.0.1:{free_port()}"
    )
    kills = 0
    results: dict[str, list[str]] = {}
    owners: dict[str, str] = {}

    async def go() -> Clients:
        nonlocal kills
        limits = httpx.Limits(max_connections=2 * SENDERS, max_keepalive_connections=2 * SENDERS)
        base = server.start("asyncio")
        async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as client:
            clients = Clients(client, rng)
            try:
                async with anyio.create_task_group() as tg:
                    for sender in range(SENDERS):
                        tg.start_soon(clients.sender, sender)
                    for incarnation in range(1, KILLS + 1):
                        if incarnation > 1:
                            server.launch("trio" if incarnation % 2 else "asyncio")
                        if incarnation > 1 and rng.random() < KILL_DURING_START:
                            await anyio.sleep(rng.uniform(0.0, 0.6))  # mid-recovery, maybe
                        else:
                            await serving(server)
                            await anyio.sleep(rng.uniform(0.2, 1.2))
                        server.kill()
                        kills += 1
                    server.launch("asyncio")
                    await serving(server)
                    clients.done = True  # each sender finishes its payload in flight
            except* Unexpected:
                pass  # reported from the ledger below
            if clients.ledger.unexpected:
                return clients
            # Stop every run and read back what it received.
            with anyio.fail_after(60):
                await clients.stop_all(owners, results)
            return clients

    try:
        clients = anyio.run(go, backend="asyncio")
    finally:
        code = server.stop() if server.proc is not None and server.proc.poll() is None else None
    ledger = clients.ledger
    assert not ledger.unexpected, f"seed {seed}:\n" + "\n".join(ledger.unexpected[:20])
    assert code == 0, server.text()[-5000:]
    assert kills >= 20

    checked = check_exactly_once(ledger, results, seed)

    # The log: intact, every run ended, and the only runs besides the owners are duplicates
    # of an unanswered start that failed on the token.
    assert main(["log", "verify", str(tmp_path / "data")]) == 0
    events = read_events(tmp_path / "data" / "log")
    created = {e.run_id for e in events if e.type == "run_created"}
    ended = {e.run_id: e for e in events if e.type in ("run_completed", "run_failed")}
    assert created == set(ended), f"runs never ended: {created - set(ended)}"
    duplicates = created - set(owners.values())
    for run_id in duplicates:
        assert ended[run_id].type == "run_failed", ended[run_id]
        assert "HookConflictError" in orjson.dumps(ended[run_id].data).decode(), ended[run_id]
    received = Counter(e.run_id for e in events if e.type == "hook_received")
    for name, run_id in owners.items():
        assert received[run_id] == len(results[name]) + 1  # + the stop

    print(
        f"\nkill -9: seed {seed}, {kills} kills survived ({server.starts} starts), "
        f"{len(ledger.names)} runs (+{len(duplicates)} duplicate starts), {checked} acknowledged "
        f"payloads checked, each delivered exactly once; unanswered requests retried: "
        f"{sum(ledger.unanswered.values())} {dict(ledger.unanswered)}; "
        f"{time.monotonic() - began:.1f}s"
    )
