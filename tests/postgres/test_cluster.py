"""Several runtimes on one PostgreSQL schema, in one test process: routing, tokens, takeover.

Each runtime is a node with its own connections, lease and in-memory state, exactly as in
separate processes; only the event loop is shared. What needs separate processes (SIGKILL,
SIGSTOP) is in ``test_cluster_processes.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from psycopg import sql
from tests.postgres.conftest import Database, require_psycopg

require_psycopg()

import actorflow as af  # noqa: E402
from actorflow.errors import (  # noqa: E402
    HookConflictError,
    HookNotFoundError,
    IdempotencyKeyConflictError,
    LeaseLostError,
)
from actorflow.runtime.cluster import SharedOwnership  # noqa: E402
from actorflow.runtime.core.events import Event  # noqa: E402
from actorflow.runtime.crypto import generate_key  # noqa: E402
from actorflow.runtime.ids import new_id  # noqa: E402
from actorflow.runtime.log.postgres_cluster import ClusterLog  # noqa: E402

pytestmark = pytest.mark.anyio


@af.workflow
async def approval(order: str) -> dict[str, Any]:
    decision = await af.create_hook(token=f"approval:{order}")
    return {"order": order, "decision": decision}


@af.workflow
async def collect(name: str, count: int) -> list[Any]:
    got = []
    with af.create_hook(token=f"collect:{name}") as hook:
        async for payload in hook:
            got.append(payload)
            if len(got) == count:
                break
    return got


@af.workflow
async def holder(token: str) -> str:
    try:
        await af.create_hook(token=token)
    except HookConflictError as exc:
        return f"conflict with {exc.conflicting_run_id}"
    return "received"


@af.workflow
async def sleeper(seconds: float) -> str:
    await af.sleep(seconds)
    return "woke"


@af.workflow
async def manual_webhook() -> str:
    webhook = af.create_webhook(respond_with="manual")
    request = await webhook
    await request.respond_with(af.Response(status=200, body=b"seen " + request.body))
    return "answered"


@af.workflow
async def webhook_bodies() -> list[str]:
    webhook = af.create_webhook()
    bodies = []
    async for request in webhook:
        if request.body == b"stop":
            return bodies
        bodies.append(request.body.decode())
    return bodies


@af.workflow
async def hoarder() -> str:
    """Leaves its hook's payloads waiting: they fill the run's mailbox."""
    af.create_hook(token="hoard")
    await af.sleep("1h")
    return "slept"


WORKFLOWS = [approval, collect, holder, sleeper, manual_webhook, webhook_bodies, hoarder]


class Nodes:
    """Runtimes sharing one schema; each ``node()`` is a new node."""

    def __init__(self, db: Database, schema: str, tmp_path: Path, stack: AsyncExitStack) -> None:
        self.db = db
        self.schema = schema
        self.tmp_path = tmp_path
        self.stack = stack
        self.count = 0

    def store(self, name: str, lease: float = 10.0) -> ClusterLog:
        return ClusterLog(
            self.db.dsn, node_id=name, schema=self.schema, durability="none", lease_seconds=lease
        )

    async def node(self, lease: float = 10.0, **options: Any) -> af.Runtime:
        self.count += 1
        name = f"node{self.count}"
        rt = af.Runtime(
            self.tmp_path / name,
            WORKFLOWS,
            store=self.store(name, lease),
            poll_interval=0.05,
            **options,
        )
        return await self.stack.enter_async_context(rt)

    def owner(self, run_id: str) -> str | None:
        rows = self.db.query(
            sql.SQL("SELECT owner FROM {} WHERE run_id = %s").format(
                sql.Identifier(self.schema, "runs")
            ),
            (run_id,),
        )
        return rows[0][0] if rows else None

    def webhook_token(self, run_id: str) -> str:
        """The token of the run's one live hook, from the shared index."""
        rows = self.db.query(
            sql.SQL("SELECT token FROM {} WHERE run_id = %s").format(
                sql.Identifier(self.schema, "hooks")
            ),
            (run_id,),
        )
        return str(rows[0][0])

    def count_events(self, run_id: str, kind: str) -> int:
        rows = self.db.query(
            sql.SQL("SELECT count(*) FROM {} WHERE run_id = %s AND type = %s").format(
                sql.Identifier(self.schema, "events")
            ),
            (run_id, kind),
        )
        return int(rows[0][0])


@pytest.fixture
async def nodes(pg_database: Database, pg_schema: str, tmp_path: Path) -> AsyncIterator[Nodes]:
    async with AsyncExitStack() as stack:
        yield Nodes(pg_database, pg_schema, tmp_path, stack)


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy (bounded in time)."""
    with anyio.fail_after(timeout):
        while True:
            value = check()
            if value:
                return value
            await anyio.sleep(0.02)


async def hook_of(rt: af.Runtime, token: str, timeout: float = 10.0) -> af.Hook:
    with anyio.fail_after(timeout):
        while True:
            try:
                return await rt.get_hook_by_token(token)
            except HookNotFoundError:
                await anyio.sleep(0.02)


# -- routing ----------------------------------------------------------------------------------


async def test_a_resume_at_another_node_reaches_the_run(nodes: Nodes) -> None:
    a = await nodes.node()
    b = await nodes.node()
    run = await a.start(approval, "o-1")
    hook = await hook_of(b, "approval:o-1")  # b reads it from the shared index
    assert hook.run_id == run.run_id
    await b.resume_hook("approval:o-1", {"ok": True})
    assert await run.result(timeout=10) == {"order": "o-1", "decision": {"ok": True}}
    # b answers for a run it does not own, from the database.
    assert await b.get_run(run.run_id).result(timeout=10) == {
        "order": "o-1",
        "decision": {"ok": True},
    }
    assert nodes.owner(run.run_id) == "node1"
    assert nodes.count_events(run.run_id, "hook_received") == 1
    with pytest.raises(HookNotFoundError):
        await b.resume_hook("approval:o-1", {"ok": False})  # the run ended: the token is free


async def test_a_routed_delivery_stays_encrypted_and_reads_at_the_owner(nodes: Nodes) -> None:
    key = generate_key()
    a = await nodes.node(encryption_key=key)
    b = await nodes.node(encryption_key=key)
    run = await a.start(approval, "sealed")
    await hook_of(b, "approval:sealed")
    await b.resume_hook("approval:sealed", {"card": "4242"})
    assert await run.result(timeout=10) == {"order": "sealed", "decision": {"card": "4242"}}
    stored = nodes.db.query(
        sql.SQL("SELECT record FROM {} WHERE run_id = %s AND type = 'hook_received'").format(
            sql.Identifier(nodes.schema, "events")
        ),
        (run.run_id,),
    )
    assert b"4242" not in bytes(stored[0][0]) and b'"$enc"' in bytes(stored[0][0])


async def test_every_payload_sent_to_any_node_arrives_once_in_order_per_sender(
    nodes: Nodes,
) -> None:
    a = await nodes.node()
    b = await nodes.node()
    c = await nodes.node()
    run = await b.start(collect, "x", 60)
    await hook_of(a, "collect:x")
    senders = [a, b, c]
    for i in range(60):
        await senders[i % 3].resume_hook("collect:x", i)
    got = await run.result(timeout=20)
    assert sorted(got) == list(range(60))
    assert nodes.count_events(run.run_id, "hook_received") == 60


async def test_an_idempotency_key_is_honoured_across_nodes(nodes: Nodes) -> None:
    a = await nodes.node()
    b = await nodes.node()
    run = await a.start(collect, "k", 2)
    await hook_of(b, "collect:k")
    await b.resume_hook("collect:k", "one", idempotency_key="k1")
    await a.resume_hook("collect:k", "one", idempotency_key="k1")  # a retry, at the owner
    await b.resume_hook("collect:k", "one", idempotency_key="k1")
    with pytest.raises(IdempotencyKeyConflictError):
        await a.resume_hook("collect:k", "other", idempotency_key="k1")
    await a.resume_hook("collect:k", "two", idempotency_key="k2")
    assert await run.result(timeout=10) == ["one", "two"]
    assert nodes.count_events(run.run_id, "hook_received") == 2


async def test_a_manual_webhook_answer_reaches_the_node_holding_the_request(
    nodes: Nodes,
) -> None:
    a = await nodes.node()
    b = await nodes.node()
    run = await a.start(manual_webhook)
    await until(lambda: nodes.count_events(run.run_id, "hook_created"))
    token = nodes.webhook_token(run.run_id)
    request = af.Request(method="POST", url="http://x/", headers={}, body=b"ping")
    response = await b.resume_webhook(token, request)
    assert (response.status, response.body) == (200, b"seen ping")
    assert await run.result(timeout=10) == "answered"


async def test_a_webhook_retried_at_another_node_is_the_same_delivery(nodes: Nodes) -> None:
    """A sender's retry reaches another host (another URL) with a fresh signature header."""
    a = await nodes.node()
    b = await nodes.node()
    run = await a.start(webhook_bodies)
    await until(lambda: nodes.count_events(run.run_id, "hook_created"))
    token = nodes.webhook_token(run.run_id)

    def request(host: str, signature: str, body: bytes) -> af.Request:
        headers = {"idempotency-key": "d-1", "x-signature": signature, "host": host}
        return af.Request(method="POST", url=f"http://{host}/hook", headers=headers, body=body)

    first = await b.resume_webhook(token, request("b.example", "t=1", b"one"))
    retry = await a.resume_webhook(token, request("a.example", "t=2", b"one"))
    assert (first.status, retry.status) == (202, 202)
    with pytest.raises(IdempotencyKeyConflictError):
        await b.resume_webhook(token, request("b.example", "t=3", b"two"))
    stop = af.Request(method="POST", url="http://a/", headers={}, body=b"stop")
    await b.resume_webhook(token, stop)
    assert await run.result(timeout=10) == ["one"]


async def test_start_once_starts_one_run_across_nodes(nodes: Nodes) -> None:
    a = await nodes.node()
    b = await nodes.node()
    first = await a.start_once("order-7", approval, "o-7")
    again = await b.start_once("order-7", approval, "o-7")
    assert again.run_id == first.run_id
    assert await b.get_run(first.run_id).status() in ("pending", "running")


async def test_a_delivery_that_lost_the_race_with_a_dispose_is_refused_not_dropped(
    nodes: Nodes,
) -> None:
    """A delivery committed to the inbox while the hook was live, which its owner reads only
    after the workflow disposed the hook, is refused: its sender hears "not found" (it never
    answered 2xx) and nothing enters the run's history."""
    a = await nodes.node()
    b = await nodes.node()
    run = await a.start(collect, "race", 1)
    await hook_of(b, "collect:race")
    assert isinstance(b.ownership, SharedOwnership)
    remote = await b.ownership.lookup("collect:race")
    assert remote is not None
    late = Event(new_id("evnt_"), run.run_id, "hook_received", remote.hook_id, 1.0,
                 {"payload": "late", "token": "collect:race", "external": True, "via": "inbox"})  # fmt: skip
    await a.resume_hook("collect:race", "taken")  # the workflow takes one, disposes the hook
    assert await run.result(timeout=10) == ["taken"]
    # What the race leaves behind: the record, committed before the dispose, still waiting.
    nodes.db.run(
        sql.SQL("INSERT INTO {} (run_id, token, event_id, record) VALUES (%s, %s, %s, %s)").format(
            sql.Identifier(nodes.schema, "inbox")
        ),
        (run.run_id, "collect:race", late.event_id, b.payloads.encode(late)),
    )
    with anyio.fail_after(10):
        assert await b.ownership.inbox.verdicts.outcome(late.event_id) == "drop"
    assert nodes.count_events(run.run_id, "hook_received") == 1
    assert nodes.db.query(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(nodes.schema, "inbox"))
    ) == [(0,)]


async def test_a_delivery_no_owner_takes_is_given_up_and_answered_503(
    nodes: Nodes, tmp_path: Path
) -> None:
    """The owner died a moment ago (its lease runs on): the sender waits a lease of its own,
    then withdraws the delivery and answers "retry later", with nothing delivered."""
    async with af.Runtime(tmp_path / "first", WORKFLOWS, store=nodes.store("first")) as first:
        run = await first.start(approval, "ghost")
        await hook_of(first, "approval:ghost")
    ghost = nodes.store("ghost", lease=60)
    assert [record for _, record in ghost.scan()]  # the ghost node owns the run now...
    assert ghost._conn is not None
    ghost._conn.close()  # ...and dies without a word, as under SIGKILL
    b = await nodes.node(lease=1.0)
    with pytest.raises(af.OverloadedError, match="did not take the delivery in time"):
        await b.resume_hook("approval:ghost", "unheard")
    assert nodes.owner(run.run_id) == "ghost"
    assert nodes.count_events(run.run_id, "hook_received") == 0
    assert nodes.db.query(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(nodes.schema, "inbox"))
    ) == [(0,)]
    ghost.close()


async def test_the_owners_mailbox_bound_holds_for_deliveries_from_other_nodes(
    nodes: Nodes,
) -> None:
    a = await nodes.node(mailbox_size=2)
    b = await nodes.node()
    run = await a.start(hoarder)
    await hook_of(b, "hoard")
    await b.resume_hook("hoard", 1)
    await b.resume_hook("hoard", 2, idempotency_key="two")
    with pytest.raises(af.OverloadedError, match="mailbox of run .* is full"):
        await b.resume_hook("hoard", 3)
    with pytest.raises(af.OverloadedError, match="mailbox of run .* is full"):
        await b.resume_hook("hoard", 4, idempotency_key="four")
    await b.resume_hook("hoard", 2, idempotency_key="two")  # a retry is not a new payload
    assert nodes.count_events(run.run_id, "hook_received") == 2


async def test_a_full_mailbox_is_answered_503_when_its_announcement_is_lost(
    nodes: Nodes,
) -> None:
    """The owner's NOTIFY of a refusal never reaches the sender, which reads the outcome by
    polling: a refusal of a live hook's delivery is a full mailbox, never "no such hook"."""
    a = await nodes.node(mailbox_size=2)
    b = await nodes.node()
    lost: list[str] = []
    b.ownership.inbox.announce = lambda event_id, outcome: lost.append(outcome)  # type: ignore[attr-defined, method-assign]
    run = await a.start(hoarder)
    await hook_of(b, "hoard")
    # Keyed deliveries go through the inbox (the key is checked against the shared index).
    await b.resume_hook("hoard", {"id": "p1"}, idempotency_key="one")
    await b.resume_hook("hoard", {"id": "p2"}, idempotency_key="two")
    with pytest.raises(af.OverloadedError, match="mailbox of run .* is full"):
        await b.resume_hook("hoard", {"id": "p3"}, idempotency_key="three")
    assert "full" in lost  # the owner did announce it; the sender never heard
    assert nodes.count_events(run.run_id, "hook_received") == 2


async def test_a_cancel_at_another_node_reaches_the_owner(nodes: Nodes) -> None:
    a = await nodes.node()
    b = await nodes.node()
    run = await a.start(approval, "o-c")
    await hook_of(b, "approval:o-c")
    await b.cancel_run(run.run_id, "no longer needed")
    with pytest.raises(af.WorkflowRunCancelledError):
        await run.result(timeout=10)
    with pytest.raises(HookNotFoundError):
        await b.resume_hook("approval:o-c", 1)
    assert nodes.count_events(run.run_id, "run_cancelled") == 1
    # Taken out of the inbox with the append, not left behind to be appended again later.
    assert nodes.db.query(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(nodes.schema, "inbox"))
    ) == [(0,)]


# -- tokens -----------------------------------------------------------------------------------


async def test_a_chosen_token_is_unique_across_nodes(nodes: Nodes) -> None:
    a = await nodes.node()
    b = await nodes.node()
    first = await a.start(holder, "shared-token")
    await hook_of(a, "shared-token")
    second = await b.start(holder, "shared-token")
    assert await second.result(timeout=10) == f"conflict with {first.run_id}"
    await b.resume_hook("shared-token", 1)
    assert await first.result(timeout=10) == "received"
    third = await b.start(holder, "shared-token")  # released with the first run: free again
    await hook_of(a, "shared-token")
    await a.resume_hook("shared-token", 2)
    assert await third.result(timeout=10) == "received"


async def test_a_token_passed_to_a_new_hook_is_found_again_by_a_node_that_remembered_it(
    nodes: Nodes,
) -> None:
    a = await nodes.node()
    b = await nodes.node()
    first = await a.start(holder, "reused-token")
    await hook_of(b, "reused-token")
    await b.resume_hook("reused-token", 1)  # b now remembers the first run's hook
    assert await first.result(timeout=10) == "received"
    second = await a.start(holder, "reused-token")
    await hook_of(a, "reused-token")
    await b.resume_hook("reused-token", 2)  # the remembered hook is gone: looked up again
    assert await second.result(timeout=10) == "received"
    assert nodes.count_events(second.run_id, "hook_received") == 1


# -- ownership --------------------------------------------------------------------------------


async def test_a_stopped_nodes_runs_are_taken_over_and_finish(
    pg_database: Database, pg_schema: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack_b:
        # b first: runtimes nest like task groups, and a must stop while b runs on.
        b = await Nodes(pg_database, pg_schema, tmp_path, stack_b).node(lease=1.5)
        nodes = Nodes(pg_database, pg_schema, tmp_path, stack_b)
        nodes.count = 10
        async with AsyncExitStack() as stack_a:
            nodes.stack = stack_a
            a = await nodes.node()
            run = await a.start(approval, "o-t")
            sleeping = await a.start(sleeper, 1.0)
            await hook_of(a, "approval:o-t")
            await b.resume_hook("approval:o-t", "before")  # into a's inbox...
        # ...a stopped (handing its runs back) before or after taking it: b finishes the run.
        assert await b.get_run(run.run_id).result(timeout=20) == {
            "order": "o-t",
            "decision": "before",
        }
        assert await b.get_run(sleeping.run_id).result(timeout=20) == "woke"
        assert nodes.count_events(run.run_id, "hook_received") == 1
        assert nodes.count_events(sleeping.run_id, "wait_completed") == 1
        assert isinstance(b.ownership, SharedOwnership)


async def test_a_node_that_loses_its_database_connection_lets_its_runs_go(
    nodes: Nodes, tmp_path: Path
) -> None:
    """The server drops a node's connections (a restart, a network cut, an admin): its log
    fails, it stops renewing its lease, and another node takes its runs over and finishes them.
    """
    b = await nodes.node(lease=1.5)  # first: runtimes nest like task groups
    store = ClusterLog(
        f"{nodes.db.dsn} application_name=actorflow-cut",
        node_id="cut",
        schema=nodes.schema,
        lease_seconds=1.5,
    )
    async with af.Runtime(tmp_path / "cut", WORKFLOWS, store=store, poll_interval=0.05) as a:
        run = await a.start(approval, "cut")
        await hook_of(a, "approval:cut")
        assert nodes.db.terminate("actorflow-cut") >= 1
        with pytest.raises(af.LogWriteError):
            await a.resume_hook("approval:cut", "lost with the connection")
        assert a.failure is not None
        await until(lambda: nodes.owner(run.run_id) == b.node_id, timeout=20)
        await b.resume_hook("approval:cut", "via the new owner")
        assert await b.get_run(run.run_id).result(timeout=10) == {
            "order": "cut",
            "decision": "via the new owner",
        }
    assert nodes.count_events(run.run_id, "hook_received") == 1


def test_a_fenced_owner_cannot_append(pg_database: Database, pg_schema: str) -> None:
    """The store-level fence: after another node claims a run, its old owner's append fails."""
    old = ClusterLog(pg_database.dsn, node_id="old", schema=pg_schema, lease_seconds=60)
    list(old.scan())
    created = orjson.dumps(["evnt_1", "wrun_f", "run_created", None, 1.0, {"workflow": "w"}])
    old.append([created])
    old.sync()
    # The old node's lease runs out (as if it had been paused for a minute).
    pg_database.run(
        sql.SQL("UPDATE {} SET lease_until = now() - interval '1 second'").format(
            sql.Identifier(pg_schema, "nodes")
        )
    )
    new = ClusterLog(pg_database.dsn, node_id="new", schema=pg_schema, lease_seconds=60)
    taken = [record for _, record in new.scan()]
    assert taken == [created]
    late = orjson.dumps(["evnt_2", "wrun_f", "run_started", None, 2.0, {}])
    with pytest.raises(LeaseLostError, match="no longer owns run"):
        old.append([late])
    with pytest.raises(Exception, match="failed earlier"):
        old.append([late])
    old.close()
    ok = orjson.dumps(["evnt_3", "wrun_f", "run_started", None, 3.0, {}])
    new.append([ok])
    new.sync()
    new.close()
    types = [
        row[0]
        for row in pg_database.query(
            sql.SQL("SELECT type FROM {} ORDER BY position").format(
                sql.Identifier(pg_schema, "events")
            )
        )
    ]
    assert types == ["run_created", "run_started"]
    fenced = pg_database.query(
        sql.SQL("SELECT fenced FROM {} WHERE node_id = 'old'").format(
            sql.Identifier(pg_schema, "nodes")
        )
    )
    assert fenced == [(True,)]


async def test_a_fenced_runtime_stops_and_commits_nothing(nodes: Nodes) -> None:
    """An owner that lost its lease (fenced by the node that took its runs) is refused."""
    b = await nodes.node(lease=1.5)  # first: runtimes nest like task groups
    rt = af.Runtime(
        nodes.tmp_path / "stale", WORKFLOWS, store=nodes.store("stale", lease=3), poll_interval=0.05
    )
    with pytest.raises(BaseException) as caught:  # noqa: PT011 (an ExceptionGroup or the error)
        async with rt:
            run = await rt.start(approval, "o-f")
            await hook_of(rt, "approval:o-f")
            # What a claimer does to a node whose lease ran out (a pause too long, a partition).
            nodes.db.run(
                sql.SQL("UPDATE {} SET fenced = true WHERE node_id = 'stale'").format(
                    sql.Identifier(nodes.schema, "nodes")
                )
            )
            await until(lambda: nodes.owner(run.run_id) == b.node_id)
            with pytest.raises(LeaseLostError):
                await rt.resume_hook("approval:o-f", "from the stale owner")
            await anyio.sleep(10)  # the lease task finds the fence and stops the runtime
    assert "LeaseLostError" in repr(caught.value)
    assert nodes.count_events(run.run_id, "hook_received") == 0
    await b.resume_hook("approval:o-f", "from the new owner")
    assert await b.get_run(run.run_id).result(timeout=10) == {
        "order": "o-f",
        "decision": "from the new owner",
    }


# -- a claim held up in the database ----------------------------------------------------------


async def test_a_claim_held_up_in_the_database_does_not_stall_other_runs(nodes: Nodes) -> None:
    """A chosen token's claim waits behind a row lock that another connection holds. The claim
    runs off the event loop's thread: meanwhile the node keeps starting runs and answering
    resumes of its other runs; once the lock goes, the claim gets its answer (a conflict)."""
    import psycopg

    b = await nodes.node()
    a = await nodes.node()
    holding = await b.start(holder, "contended")  # another node's: a must ask the database
    await hook_of(b, "contended")
    webhooks = [await a.start(webhook_bodies) for _ in range(3)]
    for run in webhooks:
        await until(lambda run=run: nodes.db.query(  # type: ignore[misc]
            sql.SQL("SELECT token FROM {} WHERE run_id = %s").format(
                sql.Identifier(nodes.schema, "hooks")
            ),
            (run.run_id,),
        ))  # fmt: skip
    webhook_tokens = [nodes.webhook_token(run.run_id) for run in webhooks]
    with psycopg.connect(nodes.db.dsn, autocommit=False) as blocker:
        # The claim's upsert must lock this row: it waits until the transaction ends.
        blocker.execute(
            sql.SQL("SELECT * FROM {} WHERE token = %s FOR UPDATE").format(
                sql.Identifier(nodes.schema, "hooks")
            ),
            ("contended",),
        )
        blocked = await a.start(holder, "contended")
        with anyio.fail_after(10):
            # The claim is out and waiting on the lock ...
            await until(
                lambda: nodes.db.query(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )[0][0]
            )
            # ... while the node serves everything else, many times over.
            fresh = await a.start(webhook_bodies)
            for round_ in range(20):
                for token in webhook_tokens:
                    await a.resume_webhook(token, af.Request("POST", "/", {}, f"{round_}".encode()))
            assert await a.get_run(blocked.run_id).status() in ("pending", "running")
            assert await a.get_run(fresh.run_id).status() in ("pending", "running")
        blocker.rollback()
    assert await blocked.result(timeout=10) == f"conflict with {holding.run_id}"
    for token, run in zip(webhook_tokens, webhooks, strict=True):
        await a.resume_webhook(token, af.Request("POST", "/", {}, b"stop"))
        assert await run.result(timeout=10) == [str(i) for i in range(20)]
    await a.resume_hook("contended", "done")  # through a, to b's run
    assert await holding.result(timeout=10) == "received"


async def test_a_run_cancelled_while_its_claim_waits_gives_the_token_back(
    nodes: Nodes, caplog: pytest.LogCaptureFixture
) -> None:
    """The run ends (cancelled) while its chosen token's claim waits in the database; the claim
    then succeeds, and is given back: the token is not left held by a run that is over."""
    import psycopg

    a = await nodes.node()
    hooks = sql.Identifier(nodes.schema, "hooks")
    with psycopg.connect(nodes.db.dsn, autocommit=False) as blocker:
        # An uncommitted insert of the same token: the claim's insert waits on it.
        blocker.execute(
            sql.SQL("INSERT INTO {} (token, run_id, hook_id) VALUES (%s, %s, %s)").format(hooks),
            ("given-back", "wrun_blocker", "hook_blocker"),
        )
        run = await a.start(holder, "given-back")
        await until(
            lambda: nodes.db.query(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )[0][0]
        )
        await run.cancel("while claiming")
        assert await run.status() == "cancelled"
        caplog.set_level("INFO", logger="actorflow.runtime")
        blocker.rollback()  # the claim goes through now, for a run that has ended
    await until(lambda: f"gave back the claim on a token of run {run.run_id}" in caplog.text)
    assert nodes.db.query(
        sql.SQL("SELECT count(*) FROM {} WHERE token = %s").format(hooks), ("given-back",)
    ) == [(0,)]
    again = await a.start(holder, "given-back")
    hook = await hook_of(a, "given-back")
    assert hook.run_id == again.run_id
    await a.resume_hook("given-back", "yes")
    assert await again.result(timeout=10) == "received"
