"""start_once: a retried start returns the first run, across restarts, and over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import read_events

import actorflow as af
from actorflow.http import create_app

pytestmark = pytest.mark.anyio


@af.workflow
async def greet(name: str) -> str:
    return f"hello {name}"


async def test_the_same_key_returns_the_first_run_and_appends_nothing(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[greet]) as rt:
        first = await rt.start_once("order-7", greet, "ana")
        again = await rt.start_once("order-7", greet, "ana")
        other = await rt.start_once("order-8", greet, "bob")
        assert again == first and other != first
        assert await first.result() == "hello ana"
        assert await other.result() == "hello bob"
    created = [e for e in read_events(tmp_path / "log") if e.type == "run_created"]
    assert len(created) == 2


async def test_the_key_survives_a_restart(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[greet]) as rt:
        first = await rt.start_once("k", greet, "ana")
        await first.wait()
    async with af.Runtime(tmp_path, workflows=[greet]) as rt:
        again = await rt.start_once("k", greet, "ana")
        assert again.run_id == first.run_id
        assert await again.result() == "hello ana"


async def test_an_empty_key_is_refused(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[greet]) as rt:
        with pytest.raises(af.WorkflowDefinitionError):
            await rt.start_once("", greet, "ana")


async def test_post_runs_with_an_idempotency_key_starts_once(
    tmp_path: Path, anyio_backend: str
) -> None:
    async with af.Runtime(tmp_path, workflows=[greet], durability="none") as rt:
        # durability="none": this test is about routing a header, not about fsync.
        app = create_app(rt, resume_secret="s", manage_runtime=False, worker=anyio_backend)
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answers: list[Any] = []
            for _ in range(3):
                answer = await client.post(
                    "/.well-known/workflow/v1/runs",
                    headers={"authorization": "Bearer s", "idempotency-key": "start-1"},
                    json={"workflow": "greet", "args": ["ana"]},
                )
                assert answer.status_code == 201, answer.text
                answers.append(answer.json()["run_id"])
        assert len(set(answers)) == 1
        assert len(rt.state.runs) == 1
