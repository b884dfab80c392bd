"""The examples: a user's own Quart route calling ``resume_hook`` (404 for HookNotFoundError, 500
for anything else), with actorflow's blueprint mounted beside it and owning the runtime's
lifespan; and the approval server's workflow driven through create_app."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest

import actorflow as af
from actorflow.http import create_app, serve

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PREFIX = "/.well-known/workflow/v1"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the example builds a plain Quart app, which serves on asyncio


def _load(name: str) -> ModuleType:
    module_name = f"examples.{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@asynccontextmanager
async def _serving(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        url = await tg.start(partial(serve, app, bind="127.0.0.1:0", shutdown_trigger=stop.wait))
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                yield client
        finally:
            stop.set()


async def test_user_route_maps_hook_not_found_to_404_and_other_errors_to_500(
    data_dir: Path,
) -> None:
    example = _load("quart_resume_route")
    rt = af.Runtime(data_dir, [example.order_approval], durability="none")
    app = example.make_app(rt)
    async with _serving(app) as client:  # the app starts and stops the runtime itself
        created = await client.post("/orders", json={"order_id": "o-1"})
        assert created.status_code == 201
        run_id = created.json()["run_id"]
        with anyio.fail_after(10):
            while True:
                if rt.state.runs[run_id].hooks:
                    break
                await anyio.sleep(0.001)
        missing = await client.post("/api/approve/o-unknown", json={"approved": True})
        assert (missing.status_code, missing.json()) == (
            404,
            {"error": "no order is waiting for approval under this id"},
        )
        approved = await client.post(
            "/api/approve/o-1", json={"approved": True}, headers={"Idempotency-Key": "k"}
        )
        assert (approved.status_code, approved.json()) == (200, {"run_id": run_id})
        # The same key with another payload: IdempotencyKeyConflictError, "anything else".
        conflict = await client.post(
            "/api/approve/o-1", json={"approved": False}, headers={"Idempotency-Key": "k"}
        )
        assert (conflict.status_code, conflict.json()) == (500, {"error": "internal error"})
        assert await rt.get_run(run_id).result(timeout=10) == {"order": "o-1", "approved": True}
        # actorflow's own routes are mounted beside the user's.
        assert (await client.get("/healthz")).status_code == 200
    # Serving ended: the blueprint closed the runtime, so the log is closed and complete.
    async with af.Runtime(data_dir, [example.order_approval], durability="none") as again:
        assert await again.get_run(run_id).status() == "completed"


async def test_the_approval_server_flow(data_dir: Path) -> None:
    example = _load("approval_server")
    rt = af.Runtime(data_dir, example.workflows, durability="none")
    app = create_app(rt, resume_secret="s", base_url="http://demo.test")
    auth = {"authorization": "Bearer s"}
    async with _serving(app) as client:
        run_id = (
            await client.post(
                f"{PREFIX}/runs",
                headers=auth,
                json={"workflow": "expense_approval", "args": ["e", 9]},
            )
        ).json()["run_id"]
        with anyio.fail_after(10):
            while True:
                hooks = (await client.get(f"{PREFIX}/runs/{run_id}", headers=auth)).json()["hooks"]
                if hooks:
                    break
                await anyio.sleep(0.001)
        url = httpx.URL(hooks[0]["url"])
        assert url.host == "demo.test"
        answered = await client.post(url.path, content=b"not json")
        assert answered.json() == {"expense": "e", "status": "receipt received, awaiting approval"}
        with anyio.fail_after(10):
            while True:
                resumed = await client.post(
                    f"{PREFIX}/hooks/resume",
                    headers=auth,
                    json={"token": "approval:e", "payload": False},
                )
                if resumed.status_code == 200:
                    break
                await anyio.sleep(0.001)
        assert await rt.get_run(run_id).result(timeout=10) == {
            "expense": "e",
            "outcome": "rejected",
            "by": None,
        }


async def test_progress_streams_to_a_page_over_server_sent_events(data_dir: Path) -> None:
    example = _load("stream_progress")
    rt = af.Runtime(data_dir, [example.job])
    app = example.make_app(rt)
    async with _serving(app) as client:
        page = await client.get("/")
        assert "EventSource" in page.text
        run_id = (await client.post("/jobs")).json()["run_id"]
        with anyio.fail_after(30):
            async with client.stream("GET", f"/jobs/{run_id}/progress") as response:
                body = (await response.aread()).decode()
            # A browser reconnecting with Last-Event-ID gets the rest, from chunk 15 on.
            again = await client.get(f"/jobs/{run_id}/progress", headers={"last-event-id": "14"})
    events = [block for block in body.split("\n\n") if block]
    chunks = [block for block in events if "event: chunk" in block]
    assert [c.splitlines()[0] for c in chunks] == [f"id: {i}" for i in range(20)]
    assert '"message":"item 20 of 20 done"' in chunks[-1]
    assert events[-1] == "event: end\ndata: {}"
    rest = [b.splitlines()[0] for b in again.text.split("\n\n") if "event: chunk" in b]
    assert rest == [f"id: {i}" for i in range(15, 20)]
