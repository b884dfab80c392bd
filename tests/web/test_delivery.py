"""What reaches the log through the route: 200 concurrent requests to 200 runs, each delivered
exactly once; a manual webhook whose server restarts in the middle. These runtimes fsync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import actorflow as af

PREFIX = "/.well-known/workflow/v1"

pytestmark = pytest.mark.anyio


@af.workflow
async def receipt() -> str:
    request = await af.create_webhook()
    return request.text()


@af.workflow
async def answers_after_go() -> str:
    """A manual webhook that answers only once hook ``go:<run_id>`` is resumed."""
    webhook = af.create_webhook(respond_with="manual", respond_timeout=30)
    request = await webhook
    run_id = af.get_workflow_metadata().run_id
    await af.create_hook(token=f"go:{run_id}")
    await request.respond_with(af.Response(200, b"answer: " + request.body))
    await af.create_hook(token=f"done:{run_id}")  # keeps the webhook live for retries
    return request.text()


async def test_200_concurrent_requests_to_200_runs_each_delivered_once(
    data_dir: Path, served: Any, wait_hooks: Any, log_events: Any
) -> None:
    async with af.Runtime(data_dir, [receipt]) as rt:
        runs = [await rt.start(receipt) for _ in range(200)]
        urls = {
            run.run_id: f"{PREFIX}/webhook/{(await wait_hooks(rt, run.run_id))[0]}" for run in runs
        }
        statuses: dict[str, int] = {}
        async with served(rt) as served_client:
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
            async with httpx.AsyncClient(
                base_url=served_client.base_url, limits=limits, timeout=30
            ) as client:

                async def send(run_id: str) -> None:
                    response = await client.post(urls[run_id], content=run_id.encode())
                    statuses[run_id] = response.status_code

                writer = rt.journal.writer
                syncs, appended = writer.syncs, writer.appended
                async with anyio.create_task_group() as tg:
                    for run in runs:
                        tg.start_soon(send, run.run_id)
                # Group commit: concurrent deliveries shared fsyncs (how many each carried is
                # the benchmarks' business: python -m benchmarks --only scale).
                assert writer.syncs - syncs < writer.appended - appended
            for run in runs:
                assert await run.result(timeout=30) == run.run_id
        assert set(statuses.values()) == {202}
        assert len(statuses) == 200
        for run in runs:
            received = log_events(rt, run.run_id, "hook_received")
            assert len(received) == 1
            assert received[0].data["request"]["body"] is not None


async def test_a_manual_webhook_across_a_server_restart_is_delivered_once(
    data_dir: Path, served: Any, wait_hooks: Any, log_events: Any
) -> None:
    """The server stops while the caller waits for the workflow's answer: the caller gets a
    clean 503 to retry (never a wrong answer, never Hypercorn's 500 for a cancelled request); after the
    restart its retry with the same Idempotency-Key gets the workflow's answer, and the log
    holds the request once."""
    headers = {"Idempotency-Key": "delivery-7"}
    first: list[object] = []

    async def caller(client: httpx.AsyncClient, url: str) -> None:
        try:
            first.append(await client.post(url, content=b"receipt-1", headers=headers))
        except httpx.TransportError as exc:
            first.append(exc)

    async with af.Runtime(data_dir, [answers_after_go]) as rt:
        run = await rt.start(answers_after_go)
        [token] = await wait_hooks(rt, run.run_id)
        url = f"{PREFIX}/webhook/{token}"
        async with httpx.AsyncClient(timeout=30) as caller_client, anyio.create_task_group() as tg:
            async with served(rt, graceful_timeout=0.2) as client:
                tg.start_soon(caller, caller_client, f"{client.base_url}{url}")
                # The request is durable and the workflow holds it: it now waits for go:<run_id>.
                await wait_hooks(rt, run.run_id, 2)
            # Leaving `served` stopped the server while the caller was still waiting.
    [outcome] = first
    assert isinstance(outcome, httpx.Response), outcome
    assert outcome.status_code == 503
    assert outcome.json()["error"] == "ServiceUnavailable"
    assert outcome.headers["retry-after"] == "1"

    async with af.Runtime(data_dir, [answers_after_go]) as rt:
        assert await rt.get_run(run.run_id).status() == "running"
        async with served(rt) as client:
            async with anyio.create_task_group() as tg:
                retried: list[httpx.Response] = []

                async def retry() -> None:
                    retried.append(await client.post(url, content=b"receipt-1", headers=headers))

                tg.start_soon(retry)
                await wait_hooks(rt, run.run_id, 2)
                await rt.resume_hook(f"go:{run.run_id}", None)
            assert retried[0].status_code == 200
            assert retried[0].content == b"answer: receipt-1"
            again = await client.post(url, content=b"receipt-1", headers=headers)
            assert (again.status_code, again.content) == (200, b"answer: receipt-1")
        await rt.resume_hook(f"done:{run.run_id}", None)
        assert await rt.get_run(run.run_id).result(timeout=10) == "receipt-1"
        requests = [
            e for e in log_events(rt, run.run_id, "hook_received") if e.data["token"] == token
        ]
        assert len(requests) == 1
        assert len(log_events(rt, run.run_id, "webhook_responded")) == 1
