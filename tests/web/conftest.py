"""Fixtures for the HTTP edge: a real Hypercorn on 127.0.0.1 port 0 and a real httpx client.

Tests are ``@pytest.mark.anyio`` tests (anyio's plugin; pytest-trio stays out of them), each run
on asyncio (a ``Quart`` app) and on trio (a ``QuartTrio`` app): the same routes, both workers.

Most runtimes here use ``durability="none"``: these tests are about HTTP semantics, and an fsync
changes nothing they can observe (a clean shutdown writes everything either way). The tests
that are about what is on disk (restart, concurrency) use the default ``"fsync"``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from tests.conftest import wait_until

import actorflow as af
from actorflow.http import create_app, serve
from actorflow.runtime.core.events import Event

SECRET = "test-resume-secret-0123456789"
AUTH = {"authorization": f"Bearer {SECRET}"}
PREFIX = "/.well-known/workflow/v1"

Served = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every test runs on both workers: a Quart app on asyncio, a QuartTrio app on trio."""
    return str(request.param)


def current_worker() -> str:
    """The worker matching the running event loop (asyncio or trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return "trio"
    return "asyncio"


@asynccontextmanager
async def _served(
    rt: af.Runtime,
    *,
    graceful_timeout: float = 5.0,
    read_timeout: float = 10.0,
    app: Any = None,
    **app_options: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    if app is None:
        app_options.setdefault("resume_secret", SECRET)
        app = create_app(rt, manage_runtime=False, worker=current_worker(), **app_options)  # type: ignore[arg-type]
    stop = anyio.Event()
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        url = await tg.start(
            partial(
                serve,
                app,
                bind="127.0.0.1:0",
                shutdown_trigger=stop.wait,
                graceful_timeout=graceful_timeout,
                read_timeout=read_timeout,
            )
        )
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                yield client
        except Exception as exc:
            # Shut the server down gracefully before reporting, so a failing test shows its
            # own error rather than the noise of a cancelled server.
            failure = exc
        finally:
            stop.set()
    if failure is not None:
        raise failure


@pytest.fixture
def served() -> Served:
    """``async with served(rt, **create_app_options) as client``: the app on a real server
    (or ``served(rt, app=app)`` for an app the test built)."""
    return _served


async def wait_for_hooks(rt: af.Runtime, run_id: str, count: int = 1) -> list[str]:
    """The tokens of the run's live hooks, once it has ``count`` of them (bounded wait)."""
    with anyio.fail_after(10):
        while True:
            run = rt.state.runs.get(run_id)
            if run is not None and len(run.hooks or ()) >= count:
                return list(run.hooks or ())
            await anyio.sleep(0.001)


@pytest.fixture
def until() -> Callable[..., Any]:
    return wait_until


def events_of(rt: af.Runtime, run_id: str, kind: str | None = None) -> list[Event]:
    """The run's durable events (optionally of one type), read back from the log."""
    run = rt.state.runs[run_id]
    records = rt.store.read(list(run.positions))
    events = [rt.payloads.decode(r, p) for r, p in zip(records, run.positions, strict=True)]
    return [e for e in events if kind is None or e.type == kind]


@pytest.fixture
def wait_hooks() -> Callable[..., Any]:
    return wait_for_hooks


@pytest.fixture
def log_events() -> Callable[..., list[Event]]:
    return events_of


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
