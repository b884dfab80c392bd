"""Issue 17 over HTTP: ``serve --version``, ``POST .../runs/retry-parked`` and ``actorflow runs
retry``, with real ``actorflow serve`` processes on one data directory (a deploy between them),
and the route on a real Hypercorn in-process on both workers."""

from __future__ import annotations

import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import read_events, wait_for_hook, wait_until
from tests.web.conftest import AUTH as ROUTE_AUTH
from tests.web.conftest import PREFIX, Served
from tests.web.test_cli import AUTH, SECRET, Server

import actorflow as af
from actorflow.cli import main
from actorflow.http.openapi import openapi_document

APP = """
import actorflow as af

@af.step(name="shop.reserve")
async def reserve(item: str) -> str:
    return f"reserved {{item}}"

@af.workflow(name="order")
async def order(tag: str) -> list:
    reserved = await reserve({item!r})
    return [reserved, await af.create_hook(token=f"order:{{tag}}")]

workflows = [order]
"""


def deploy(app_dir: Path, item: str) -> None:
    (app_dir / "shop_app.py").write_text(textwrap.dedent(APP.format(item=item)))


def serve(tmp_path: Path, *extra: str) -> tuple[Server, str]:
    server = Server(
        tmp_path,
        "shop_app",
        "--app-dir", str(tmp_path / "app"),
        "--bind", "127.0.0.1:0",
        "--data-dir", str(tmp_path / "data"),
        "--graceful-timeout", "2",
        *extra,
    )  # fmt: skip
    base = server.wait_for(r"serving order at (http://127\.0\.0\.1:\d+)").group(1)
    return server, base


def poll(fn: Any, until: Any, tries: int = 1000) -> Any:
    value = None
    for _ in range(tries):
        value = fn()
        if until(value):
            return value
        time.sleep(0.01)
    raise AssertionError(f"never: last {value!r}")


def test_a_bad_deploy_parks_runs_a_retry_reports_them_and_a_rollback_finishes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "app").mkdir()
    deploy(tmp_path / "app", "book")
    server, base = serve(tmp_path, "--version", "2026.12.1")
    try:
        with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
            run_id = client.post(
                f"{PREFIX}/runs", json={"workflow": "order", "args": ["t"]}
            ).json()["run_id"]
            poll(lambda: client.get(f"{PREFIX}/hooks/order:t").status_code, lambda s: s == 200)
    finally:
        assert server.stop(signal.SIGTERM) == 0, "".join(server.lines)

    deploy(tmp_path / "app", "pen")  # the next deploy changes the step's arguments
    server, base = serve(tmp_path, "--version", "2026.12.1")
    try:
        server.wait_for(r"run wrun_\w+ is parked")
        with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
            assert client.get(f"{PREFIX}/runs/{run_id}").json()["status"] == "running"
            resumed = client.post(
                f"{PREFIX}/hooks/resume", json={"token": "order:t", "payload": {"id": "p1"}}
            )
            assert resumed.status_code == 200  # accepted while parked
        monkeypatch.setenv("ACTORFLOW_RESUME_SECRET", SECRET)
        capsys.readouterr()
        assert main(["runs", "retry", "--url", base]) == 0
        assert capsys.readouterr().out.splitlines() == [
            "0 resumed, 1 still parked",
            f"parked   {run_id}",
        ]
        monkeypatch.delenv("ACTORFLOW_RESUME_SECRET")
        assert main(["runs", "retry", "--url", base]) == 1  # no secret: refused
        assert "401" in capsys.readouterr().err
    finally:
        assert server.stop(signal.SIGTERM) == 0, "".join(server.lines)

    deploy(tmp_path / "app", "book")  # rolled back
    server, base = serve(tmp_path, "--version", "2026.12.1")
    try:
        with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
            run = poll(
                lambda: client.get(f"{PREFIX}/runs/{run_id}").json(),
                lambda r: r["status"] == "completed",
            )
        assert run["result"] == ["reserved book", {"id": "p1"}]
    finally:
        assert server.stop(signal.SIGTERM) == 0, "".join(server.lines)
    events = [e for e in read_events(tmp_path / "data" / "log") if e.run_id == run_id]
    kinds = [e.type for e in events]
    assert kinds.count("run_parked") == 1 and kinds.count("run_unparked") == 1
    assert kinds.count("hook_received") == 1 and kinds.count("run_completed") == 1
    assert events[0].data["version"] == "2026.12.1"


def test_runs_retry_needs_an_http_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "retry", "--url", "localhost:1"]) == 2
    assert "http://" in capsys.readouterr().err


# -- the route in-process, both workers --------------------------------------------------------


@af.workflow(name="deploy_route")
async def routed(tag: str) -> Any:
    return await af.create_hook(token=f"route:{tag}")


@pytest.mark.anyio
async def test_the_retry_route_answers_its_report_and_needs_the_secret(
    tmp_path: Path, served: Served
) -> None:
    async with af.Runtime(tmp_path, workflows=[routed]) as rt:
        run = await rt.start(routed, "r")
        await wait_for_hook(rt, "route:r")
    async with af.Runtime(tmp_path) as rt:  # the workflow is missing: the run parks
        async with served(rt) as client:
            assert (await client.post(f"{PREFIX}/runs/retry-parked")).status_code == 401
            state = rt.state.runs[run.run_id]
            await wait_until(lambda: state.actor is not None and state.actor.parked)
            answer = await client.post(f"{PREFIX}/runs/retry-parked", headers=ROUTE_AUTH)
            assert answer.status_code == 200
            assert answer.json() == {"resumed": [], "parked": [run.run_id]}
            rt.register(routed)
            answer = await client.post(f"{PREFIX}/runs/retry-parked", headers=ROUTE_AUTH)
            assert answer.json() == {"resumed": [run.run_id], "parked": []}


def test_the_openapi_document_lists_the_retry_route() -> None:
    document = openapi_document(resume_routes=True)
    operation = document["paths"][f"{PREFIX}/runs/retry-parked"]["post"]
    assert operation["operationId"] == "retry_parked"
    assert "RetryReport" in document["components"]["schemas"]
    assert f"{PREFIX}/runs/retry-parked" not in openapi_document(resume_routes=False)["paths"]
