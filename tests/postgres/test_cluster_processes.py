"""Three real ``actorflow serve`` processes on one PostgreSQL schema: SIGKILL, SIGSTOP.

- **Kill one of three** (two on the asyncio worker, one on trio). Concurrent senders start runs and send payloads (over the hook route
  and the webhook route, with idempotency keys) to random processes, retrying until a 2xx like
  real senders. One process is killed with SIGKILL in the middle. Its runs must be taken over by
  the others and finish, and every acknowledged payload must be in its run's result exactly
  once, each sender's payloads in the order they were acknowledged (the checks of the single
  process kill -9 suite, ``tests/web/test_kill9.py``, whose senders this reuses).
- **Lease expiry.** A process is paused with SIGSTOP past its lease; another takes its run over
  and the run goes on there. The old owner, continued with SIGCONT, still believes it owns the
  run: its delivery must reach the store and be refused there by the append's fence
  (``LeaseLostError``, answered ``503``), with nothing committed, and it must stop. Its lease
  renewal, which would also notice, is held back meanwhile (the test locks the leases' table
  against writes for that moment), so the refusal seen is the fence's and not a connection
  closing or the renewal's.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from psycopg import sql
from tests.fixtures.server_process import ServerProcess, free_port
from tests.postgres.conftest import Database, require_psycopg
from tests.web.test_kill9 import AUTH, PREFIX, Clients, Unexpected, check_exactly_once

require_psycopg()

pytestmark = pytest.mark.slow

LEASE = 2.0
SENDERS = 12
PAYLOADS_PER_RUN = 10
_NODE = re.compile(r", node ([^\s)]+)\)")


def cluster_server(db: Database, schema: str, tmp_path: Path, name: str) -> ServerProcess:
    return ServerProcess(
        tmp_path / name,
        tmp_path / f"{name}.log",
        bind=f"127.0.0.1:{free_port()}",
        extra=("--store", db.url, "--schema", schema, "--lease-seconds", str(LEASE)),
    )


def node_of(server: ServerProcess) -> str:
    found = _NODE.search(server.text())
    assert found is not None, server.text()[-3000:]
    return found.group(1)


def table(db: Database, schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


def hold_lease_renewals(db: Database, schema: str) -> Any:
    """A connection in a transaction holding ``nodes`` in ``SHARE`` mode: every node's lease
    renewal (an ``UPDATE`` of its row) waits until it is rolled back; reads go on.

    A row lock would not do: the renewal's ``UPDATE ... WHERE NOT fenced`` skips a fenced
    node's row without waiting for its lock, and answers "fenced" at once."""
    import psycopg

    conn = psycopg.connect(db.dsn, application_name="actorflow-tests")
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(table(db, schema, "nodes")))
    return conn


class SpreadClients(Clients):
    """The kill -9 suite's senders, each request sent to a random live process."""

    def __init__(self, client: httpx.AsyncClient, rng: random.Random, servers: list[Any]) -> None:
        super().__init__(client, rng)
        self.servers = servers

    def url_for(self, path: str) -> str:
        live = [s for s in self.servers if s.proc is not None and s.proc.poll() is None]
        return self.rng.choice(live).url + path


def test_runs_of_a_killed_process_are_taken_over_and_nothing_is_lost_or_doubled(
    pg_database: Database, pg_schema: str, tmp_path: Path
) -> None:
    began = time.monotonic()
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    servers = [cluster_server(pg_database, pg_schema, tmp_path, f"p{i}") for i in range(3)]
    results: dict[str, list[str]] = {}
    owners: dict[str, str] = {}
    victim_runs: list[str] = []

    async def go() -> SpreadClients:
        for server, worker in zip(servers, ("asyncio", "trio", "asyncio"), strict=True):
            server.start(worker)  # the nodes need not share an event loop kind
        victim = servers[rng.randrange(3)]
        limits = httpx.Limits(max_connections=2 * SENDERS, max_keepalive_connections=2 * SENDERS)
        async with httpx.AsyncClient(timeout=15, limits=limits) as client:
            clients = SpreadClients(client, rng, servers)
            try:
                async with anyio.create_task_group() as tg:
                    for sender in range(SENDERS):
                        tg.start_soon(clients.sender, sender)
                    await anyio.sleep(rng.uniform(2.0, 3.0))
                    victim_node = node_of(victim)
                    victim.kill()
                    victim_runs.extend(
                        row[0]
                        for row in pg_database.query(
                            sql.SQL(
                                "SELECT run_id FROM {} WHERE owner = %s "
                                "AND status IN ('pending', 'running')"
                            ).format(table(pg_database, pg_schema, "runs")),
                            (victim_node,),
                        )
                    )
                    # Senders go on with the two others, through the takeover and after it.
                    await anyio.sleep(LEASE * 2 + 2.0)
                    clients.done = True
            except* Unexpected:
                pass
            if clients.ledger.unexpected:
                return clients
            with anyio.fail_after(90):
                await clients.stop_all(owners, results)
            return clients

    try:
        clients = anyio.run(go, backend="asyncio")
    finally:
        codes = [
            s.stop() if s.proc is not None and s.proc.poll() is None else None for s in servers
        ]
    ledger = clients.ledger
    assert not ledger.unexpected, f"seed {seed}:\n" + "\n".join(ledger.unexpected[:20])
    assert codes.count(0) == 2, [s.text()[-3000:] for s in servers]
    assert victim_runs, "the killed process owned no unfinished run: nothing was taken over"

    checked = check_exactly_once(ledger, results, seed)

    # The database: every run ended; duplicates of an unanswered start failed on the token
    # (unique across the processes); the killed process's runs finished under a new owner;
    # no delivery is left in the inbox.
    runs = {
        row[0]: (row[1], row[2])
        for row in pg_database.query(
            sql.SQL("SELECT run_id, status, owner FROM {}").format(
                table(pg_database, pg_schema, "runs")
            )
        )
    }
    assert all(status in ("completed", "failed") for status, _ in runs.values()), runs
    duplicates = set(runs) - set(owners.values())
    for run_id in duplicates:
        assert runs[run_id][0] == "failed"
        failure = pg_database.query(
            sql.SQL("SELECT record FROM {} WHERE run_id = %s AND type = 'run_failed'").format(
                table(pg_database, pg_schema, "events")
            ),
            (run_id,),
        )
        assert "HookConflictError" in bytes(failure[0][0]).decode(), failure
    victim_node = node_of(victim_server(servers, codes))
    for run_id in victim_runs:
        assert runs[run_id][1] != victim_node, run_id
    inbox = pg_database.query(
        sql.SQL("SELECT count(*) FROM {}").format(table(pg_database, pg_schema, "inbox"))
    )
    assert inbox == [(0,)]
    received = Counter(
        row[0]
        for row in pg_database.query(
            sql.SQL("SELECT run_id FROM {} WHERE type = 'hook_received'").format(
                table(pg_database, pg_schema, "events")
            )
        )
    )
    for name, run_id in owners.items():
        assert received[run_id] == len(results[name]) + 1  # + the stop

    print(
        f"\n3 processes, one killed: seed {seed}, {len(ledger.names)} runs "
        f"(+{len(duplicates)} duplicate starts), {len(victim_runs)} taken over, {checked} "
        f"acknowledged payloads checked, each delivered exactly once; unanswered requests "
        f"retried: {sum(ledger.unanswered.values())} {dict(ledger.unanswered)}; "
        f"{time.monotonic() - began:.1f}s"
    )


def victim_server(servers: list[ServerProcess], codes: list[int | None]) -> ServerProcess:
    """The process that was killed: the one that was not running at the end."""
    killed = [s for s, code in zip(servers, codes, strict=True) if code is None]
    assert len(killed) == 1, codes
    return killed[0]


def test_an_owner_paused_past_its_lease_is_refused_when_it_comes_back(
    pg_database: Database, pg_schema: str, tmp_path: Path
) -> None:
    old = cluster_server(pg_database, pg_schema, tmp_path, "old")
    new = cluster_server(pg_database, pg_schema, tmp_path, "new")

    def owner(run_id: str) -> str | None:
        rows = pg_database.query(
            sql.SQL("SELECT owner FROM {} WHERE run_id = %s").format(
                table(pg_database, pg_schema, "runs")
            ),
            (run_id,),
        )
        return rows[0][0] if rows else None

    def payloads(run_id: str) -> list[Any]:
        rows = pg_database.query(
            sql.SQL(
                "SELECT record FROM {} WHERE run_id = %s AND type = 'hook_received' "
                "ORDER BY position"
            ).format(table(pg_database, pg_schema, "events")),
            (run_id,),
        )
        return [orjson.loads(bytes(row[0]))[5]["payload"] for row in rows]

    def resume(client: httpx.Client, server: ServerProcess, payload: Any) -> int:
        try:
            response = client.post(
                f"{server.url}{PREFIX}/hooks/resume",
                headers=AUTH,
                json={"token": "collect:paused", "payload": payload},
            )
        except httpx.TransportError:
            return 0  # refused or reset: the process is stopping
        return response.status_code

    old.start()
    new.start()
    try:
        with httpx.Client(timeout=10) as client:
            started = client.post(
                f"{old.url}{PREFIX}/runs",
                headers=AUTH,
                json={"workflow": "collector", "args": ["paused"]},
            )
            assert started.status_code in (200, 201, 202), started.text
            run_id = started.json()["run_id"]
            # The run claims its chosen token in the database once it runs, after the start
            # is answered: wait until the hook is live before resuming it.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                looked = client.get(f"{old.url}{PREFIX}/hooks/collect:paused", headers=AUTH)
                if looked.status_code == 200:
                    break
                time.sleep(0.02)
            assert resume(client, old, {"id": "a"}) == 200
            assert owner(run_id) == node_of(old)

            assert old.proc is not None
            old.proc.send_signal(signal.SIGSTOP)
            try:
                deadline = time.monotonic() + LEASE * 10
                while owner(run_id) != node_of(new):
                    assert time.monotonic() < deadline, "the run was never taken over"
                    time.sleep(0.05)
                assert resume(client, new, {"id": "b"}) == 200
                # Hold lease renewals back (briefly: the new node's too), so that the old node's
                # overdue renewal waits once it runs again and cannot be what stops it: the
                # stale append must meet the fence.
                lease = hold_lease_renewals(pg_database, pg_schema)
            finally:
                old.proc.send_signal(signal.SIGCONT)
            try:
                # The old owner still holds the run in memory and appends the payload: the
                # store refuses it (the run is not its own any more) and nothing commits.
                stale = client.post(
                    f"{old.url}{PREFIX}/hooks/resume",
                    headers=AUTH,
                    json={"token": "collect:paused", "payload": {"id": "from the stale owner"}},
                )
                assert stale.status_code == 503, f"{stale.text}\n{old.text()[-4000:]}"
                assert stale.json()["error"] == "LeaseLostError", stale.text
                assert f"no longer owns run(s) {run_id}" in old.text(), old.text()[-3000:]
            finally:
                lease.rollback()
                lease.close()
            code = old.proc.wait(30)
            assert code != 0, old.text()[-3000:]
            assert resume(client, new, {"stop": True}) == 200
            deadline = time.monotonic() + 30
            while True:
                run = client.get(f"{new.url}{PREFIX}/runs/{run_id}", headers=AUTH).json()
                if run["status"] == "completed":
                    break
                assert time.monotonic() < deadline, run
                time.sleep(0.05)
            assert run["result"] == ["a", "b"]
            assert payloads(run_id) == [{"id": "a"}, {"id": "b"}, {"stop": True}]
    finally:
        for server in (old, new):
            if server.proc is not None and server.proc.poll() is None:
                server.stop()
