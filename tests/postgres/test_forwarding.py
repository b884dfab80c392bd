"""Deliveries forwarded straight to the run's owner over a peer link, and what happens when the
link fails: the inbox takes them under the same event id, and nothing is appended twice.

Several runtimes on one schema in one test process (each a node with its own connections, peer
listener and links, exactly as in separate processes), on a real PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import orjson
import pytest
from psycopg import sql
from tests.postgres.conftest import Database, require_psycopg
from tests.postgres.test_cluster import WORKFLOWS, Nodes, collect, hoarder, hook_of
from tests.web.conftest import current_worker

require_psycopg()

import actorflow as af  # noqa: E402
from actorflow.http import create_app  # noqa: E402
from actorflow.runtime.cluster import SharedOwnership  # noqa: E402
from actorflow.runtime.peer_link import frame  # noqa: E402
from actorflow.runtime.peer_server import PeerServer  # noqa: E402

pytestmark = pytest.mark.anyio

SECRET = "forwarding-secret"


@pytest.fixture
async def nodes(pg_database: Database, pg_schema: str, tmp_path: Path) -> AsyncIterator[Nodes]:
    async with AsyncExitStack() as stack:
        yield Nodes(pg_database, pg_schema, tmp_path, stack)


def shared(rt: af.Runtime) -> SharedOwnership:
    assert isinstance(rt.ownership, SharedOwnership)
    return rt.ownership


def forwarded(rt: af.Runtime) -> tuple[int, int]:
    """(deliveries forwarded and answered by their owner, deliveries sent by the inbox instead)"""
    forwarder = shared(rt).forwarder
    assert forwarder is not None
    return forwarder.forwarded, forwarder.fell_back


def inbox_rows(nodes: Nodes) -> int:
    rows = nodes.db.query(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(nodes.schema, "inbox"))
    )
    return int(rows[0][0])


def payloads_of(nodes: Nodes, run_id: str) -> list[Any]:
    """The payloads in the run's history, decoded from the stored records (unencrypted)."""
    rows = nodes.db.query(
        sql.SQL(
            "SELECT record FROM {} WHERE run_id = %s AND type = 'hook_received' ORDER BY position"
        ).format(sql.Identifier(nodes.schema, "events")),
        (run_id,),
    )
    return [orjson.loads(bytes(row[0]))[5]["payload"] for row in rows]


async def test_a_delivery_at_another_node_is_forwarded_and_lands_once(nodes: Nodes) -> None:
    a = await nodes.node()
    b = await nodes.node()
    run = await a.start(collect, "fw", 20)
    await hook_of(b, "collect:fw")
    for i in range(20):
        await b.resume_hook("collect:fw", {"id": i})
    assert await run.result(timeout=10) == [{"id": i} for i in range(20)]
    assert forwarded(b) == (20, 0)
    assert nodes.count_events(run.run_id, "hook_received") == 20
    assert inbox_rows(nodes) == 0
    published = nodes.db.query(
        sql.SQL("SELECT node_id, peer FROM {} ORDER BY node_id").format(
            sql.Identifier(nodes.schema, "nodes")
        )
    )
    assert [(node, peer.startswith("127.0.0.1:")) for node, peer in published] == [
        ("node1", True),
        ("node2", True),
    ]


async def test_a_reply_lost_after_the_append_is_not_appended_twice(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner appends a forwarded delivery, then the link breaks before the reply: the sender
    commits it to the inbox under the same event id, and the owner recognises it there."""
    a = await nodes.node()
    b = await nodes.node()
    run = await a.start(collect, "lost", 6)
    await hook_of(b, "collect:lost")
    original = PeerServer._reply
    cut = {"count": 0}

    async def reply_then_cut(stream: Any, waiting: Any) -> None:
        async with waiting:
            async for _, ticket, _ in waiting:
                if ticket is not None:
                    await ticket.wait()  # durable in the owner's history...
                cut["count"] += 1
                await stream.aclose()  # ...and the link dies before the reply
                return

    monkeypatch.setattr(PeerServer, "_reply", staticmethod(reply_then_cut))
    await b.resume_hook("collect:lost", {"id": 0})
    assert cut["count"] == 1
    assert forwarded(b) == (0, 1)  # it went by the inbox too, and was answered from there
    monkeypatch.setattr(PeerServer, "_reply", staticmethod(original))
    for i in range(1, 6):  # the link is dialled again after a pause; by the inbox meanwhile
        await b.resume_hook("collect:lost", {"id": i})
    assert await run.result(timeout=10) == [{"id": i} for i in range(6)]
    assert payloads_of(nodes, run.run_id) == [{"id": i} for i in range(6)]
    assert inbox_rows(nodes) == 0


async def test_an_owner_that_stops_mid_forward_loses_and_doubles_nothing(
    nodes: Nodes, tmp_path: Path
) -> None:
    """Senders at two nodes resume a run owned by a third, which stops under load: the run is
    taken over, the deliveries in flight go by the inbox (same event ids), and every payload
    acknowledged is in the history exactly once; none is there twice."""
    b = await nodes.node(lease=1.0)
    c = await nodes.node(lease=1.0)
    total = 120
    acknowledged: list[int] = []
    stop_owner = anyio.Event()

    async def serve_owner(*, task_status: anyio.abc.TaskStatus[af.Runtime]) -> None:
        store = nodes.store("owner")
        async with af.Runtime(tmp_path / "owner", WORKFLOWS, store=store, poll_interval=0.05) as rt:
            task_status.started(rt)
            await stop_owner.wait()  # then it stops: hands its runs back, its links break

    async def send(rt: af.Runtime, ids: range) -> None:
        for i in ids:
            if i == ids.start + 40:
                stop_owner.set()
            for _ in range(400):
                try:
                    await rt.resume_hook("collect:stop", {"id": i})
                except af.WorkflowError:
                    await anyio.sleep(0.05)  # unacknowledged: retry, as a real sender would
                    continue
                acknowledged.append(i)
                break

    async with anyio.create_task_group() as tg:
        owner = await tg.start(serve_owner)
        run = await owner.start(collect, "stop", total)
        await hook_of(b, "collect:stop")
        await hook_of(c, "collect:stop")
        tg.start_soon(send, b, range(0, total, 2))
        tg.start_soon(send, c, range(1, total, 2))
    got = [p["id"] for p in payloads_of(nodes, run.run_id)]
    assert sorted(set(got)) == sorted(got), "a payload is in the history twice"
    assert sorted(acknowledged) == list(range(total))
    assert set(acknowledged) <= set(got)
    survivor = b if nodes.owner(run.run_id) == "node1" else c
    result = await survivor.get_run(run.run_id).result(timeout=20)
    assert sorted(p["id"] for p in result) == list(range(total))
    assert inbox_rows(nodes) == 0
    assert forwarded(b)[0] > 0 and forwarded(c)[0] > 0
    adopted = survivor.metrics.registry.get_sample_value("actorflow_runs_adopted_total")
    assert adopted is not None and adopted >= 1


async def test_unauthenticated_or_malformed_peers_are_refused(nodes: Nodes) -> None:
    a = await nodes.node()
    run = await a.start(collect, "guard", 1)
    await hook_of(a, "collect:guard")
    server = shared(a).peer_server
    assert server is not None
    address = nodes.db.query(
        sql.SQL("SELECT peer FROM {} WHERE node_id = 'node1'").format(
            sql.Identifier(nodes.schema, "nodes")
        )
    )[0][0]
    host, _, port = address.rpartition(":")

    async def attempt(payload: bytes) -> bytes:
        """Send ``payload`` after the listener's greeting; what comes back before it closes."""
        async with await anyio.connect_tcp(host, int(port)) as stream:
            greeting = await stream.receive()
            assert b'"nonce"' in greeting
            await stream.send(payload)
            answer = b""
            with anyio.move_on_after(5):
                try:
                    while True:
                        answer += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
            return answer

    record = a.payloads.encode(
        a.journal.event(run.run_id, "hook_received", "x", {"payload": 1, "token": "collect:guard"})
    )
    request = frame({"i": 1, "sent": 0}, record)
    # A request without the handshake, a wrong MAC, garbage, and an oversized frame length.
    assert await attempt(request) == b""
    bad = frame({"node": "intruder", "nonce": "00" * 32, "mac": "00" * 32})
    assert await attempt(bad + request) == b""
    assert await attempt(b"GET / HTTP/1.1\r\n\r\n") == b""
    assert await attempt(struct.pack(">II", 2**31, 4)) == b""
    assert server.refused == 4
    assert a.metrics.registry.get_sample_value("actorflow_peer_links_refused_total") == 4
    assert nodes.count_events(run.run_id, "hook_received") == 0
    # The node still serves its real peers.
    b = await nodes.node()
    await b.resume_hook("collect:guard", "real")
    assert await run.result(timeout=10) == ["real"]
    assert forwarded(b) == (1, 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_node_listens_on_the_peer_port_it_is_given(nodes: Nodes) -> None:
    port = _free_port()
    await nodes.node(peer_port=port)
    published = nodes.db.query(
        sql.SQL("SELECT peer FROM {}").format(sql.Identifier(nodes.schema, "nodes"))
    )
    assert published == [(f"127.0.0.1:{port}",)]


async def test_http_answers_are_the_same_through_a_forward(nodes: Nodes) -> None:
    """404 (hook gone), 409 (key conflict) and 503 (mailbox full), from the owner's own app and
    from another node's, which forwards (or, for keyed resumes, uses the inbox)."""
    a = await nodes.node(mailbox_size=1)
    b = await nodes.node(mailbox_size=1)
    full = await a.start(hoarder)
    await hook_of(b, "hoard")
    done = await a.start(collect, "gone", 1)
    await hook_of(b, "collect:gone")
    await a.resume_hook("collect:gone", "last")
    await done.result(timeout=10)
    await a.resume_hook("hoard", 1, idempotency_key="k")
    clients = [
        create_app(rt, resume_secret=SECRET, manage_runtime=False,
                   worker=current_worker()).test_client()  # type: ignore[arg-type]
        for rt in (a, b)
    ]  # fmt: skip
    headers = {"Authorization": f"Bearer {SECRET}"}

    async def answers(body: dict[str, Any]) -> list[tuple[int, str, str]]:
        out = []
        for client in clients:
            response = await client.post(
                "/.well-known/workflow/v1/hooks/resume", json=body, headers=headers
            )
            data = await response.get_json()
            out.append((response.status_code, data["error"], response.headers.get("Retry-After")))
        return out

    gone = await answers({"token": "collect:gone", "payload": 2})
    assert gone[0] == gone[1] and gone[0][:2] == (404, "HookNotFoundError")
    overloaded = await answers({"token": "hoard", "payload": 2})
    assert overloaded[0] == overloaded[1] and overloaded[0][:2] == (503, "OverloadedError")
    conflict = await answers({"token": "hoard", "payload": 3, "idempotency_key": "k"})
    assert conflict[0] == conflict[1] and conflict[0][:2] == (409, "IdempotencyKeyConflictError")
    with pytest.raises(af.OverloadedError) as local, anyio.fail_after(10):
        await a.resume_hook("hoard", 4)
    with pytest.raises(af.OverloadedError) as routed, anyio.fail_after(10):
        await b.resume_hook("hoard", 4)
    assert str(local.value) == str(routed.value)
    assert local.value.retry_after == routed.value.retry_after
    assert forwarded(b)[1] == 0
    assert nodes.count_events(full.run_id, "hook_received") == 1


async def point_at_node3(nodes: Nodes, rt: af.Runtime, token: str) -> None:
    """Make ``rt`` remember node3 as the owner of ``token``'s run: a stale view of the owner."""
    entry = await shared(rt).lookup(token)
    assert entry is not None and entry.remote is not None
    peer = nodes.db.query(
        sql.SQL("SELECT peer FROM {} WHERE node_id = 'node3'").format(
            sql.Identifier(nodes.schema, "nodes")
        )
    )[0][0]
    entry.remote = dataclasses.replace(entry.remote, owner="node3", peer=peer)


async def test_a_forward_to_a_node_that_does_not_own_the_run_goes_by_the_inbox(
    nodes: Nodes,
) -> None:
    """A sender whose view of the owner is out of date (it remembered another node) is told
    so by that node, and delivers through the inbox instead, once."""
    a = await nodes.node()
    b = await nodes.node()
    c = await nodes.node()
    run = await a.start(collect, "moved", 2)
    await hook_of(b, "collect:moved")
    await point_at_node3(nodes, b, "collect:moved")
    await b.resume_hook("collect:moved", "first")
    assert forwarded(b) == (0, 1)
    assert shared(b)._hook_cache.get("collect:moved") is None  # looked up afresh next time
    await b.resume_hook("collect:moved", "second")
    assert forwarded(b) == (1, 1)
    assert await run.result(timeout=10) == ["first", "second"]
    assert nodes.count_events(run.run_id, "hook_received") == 2
    assert forwarded(c) == (0, 0)


async def test_routing_between_nodes_is_counted_in_metrics(nodes: Nodes, tmp_path: Path) -> None:
    """Each node's /metrics registry counts what it routed: forwards answered by the owner,
    deliveries that went by the inbox (after a failed forward, or keyed), and what the owner
    took; a runtime alone exposes none of these."""
    a = await nodes.node()
    b = await nodes.node()
    c = await nodes.node()
    run = await a.start(collect, "counted", 5)
    await hook_of(b, "collect:counted")
    for i in range(3):
        await b.resume_hook("collect:counted", {"id": i})
    await point_at_node3(nodes, b, "collect:counted")  # which answers it is not the owner
    await b.resume_hook("collect:counted", {"id": 3})
    await b.resume_hook("collect:counted", {"id": 4}, idempotency_key="k4")  # by the inbox
    assert await run.result(timeout=10) == [{"id": i} for i in range(5)]
    await b.resume_hook("collect:counted", {"id": 4}, idempotency_key="k4")  # answered, not sent

    def value(rt: af.Runtime, name: str, **labels: str) -> float | None:
        return rt.metrics.registry.get_sample_value(name, labels)

    assert value(b, "actorflow_routed_deliveries_total", path="forwarded") == 3
    assert value(b, "actorflow_routed_deliveries_total", path="inbox") == 2
    assert value(b, "actorflow_routed_forward_fallbacks_total") == 1
    assert value(a, "actorflow_taken_deliveries_total", path="forwarded") == 3
    assert value(a, "actorflow_taken_deliveries_total", path="inbox") == 2
    assert value(a, "actorflow_routed_deliveries_total", path="forwarded") == 0
    assert value(c, "actorflow_taken_deliveries_total", path="forwarded") == 0
    for rt in (a, b, c):
        assert value(rt, "actorflow_peer_links_refused_total") == 0
        assert value(rt, "actorflow_runs_adopted_total") == 0
    async with af.Runtime(tmp_path / "alone", workflows=WORKFLOWS) as alone:
        assert value(alone, "actorflow_routed_deliveries_total", path="forwarded") is None
        assert value(alone, "actorflow_runs_started_total") == 0
