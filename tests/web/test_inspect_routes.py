"""The listing routes and the new fields of GET .../runs/<id>, on a real Hypercorn (file log).

The same routes over the PostgreSQL store: tests/postgres/test_query_on_postgres.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.conftest import wait_for_hook, wait_until

import actorflow as af

SECRET = "test-resume-secret-0123456789"
AUTH = {"authorization": f"Bearer {SECRET}"}
PREFIX = "/.well-known/workflow/v1"

pytestmark = pytest.mark.anyio


@af.workflow
async def waits(name: str) -> str:
    return str(await af.create_hook(token=f"w:{name}"))


@af.workflow
async def fails() -> None:
    raise ValueError("no")


@af.workflow
async def sleeps() -> None:
    await af.sleep("2h")


@pytest.fixture
async def rt(data_dir: Path) -> AsyncIterator[af.Runtime]:
    async with af.Runtime(
        data_dir, [waits, fails, sleeps], durability="none", base_url="http://edge.test"
    ) as runtime:
        yield runtime


async def _get(client: Any, path: str, **params: Any) -> Any:
    return await client.get(f"{PREFIX}{path}", params=params, headers=AUTH)


async def test_list_runs_pages_and_filters(rt: af.Runtime, served: Any) -> None:
    runs = [await rt.start(fails) for _ in range(3)] + [await rt.start(waits, "a")]
    for run in runs[:3]:
        await wait_until(lambda run=run: rt.state.runs[run.run_id].status == "failed")  # type: ignore[misc]
    await wait_for_hook(rt, "w:a")
    async with served(rt) as client:
        everything = await _get(client, "/runs")
        assert everything.status_code == 200
        body = everything.json()
        assert [r["run_id"] for r in body["items"]] == [r.run_id for r in reversed(runs)]
        assert body["next_cursor"] is None
        first = body["items"][0]
        assert first["workflow_name"] == "waits" and first["status"] == "running"
        assert first["created_at"].endswith("+00:00") and first["completed_at"] is None

        ids: list[str] = []
        cursor = None
        while True:
            params = {"status": "failed", "limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = (await _get(client, "/runs", **params)).json()
            ids.extend(r["run_id"] for r in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert ids == [r.run_id for r in reversed(runs[:3])]
        named = (await _get(client, "/runs", workflow="waits")).json()["items"]
        assert [r["run_id"] for r in named] == [runs[3].run_id]


@pytest.mark.parametrize(
    ("path", "params", "names"),
    [
        ("/runs", {"status": "exploded"}, "status"),
        ("/runs", {"limit": "0"}, "limit"),
        ("/runs", {"limit": "many"}, "limit"),
        ("/runs", {"cursor": "wrun_nope"}, "cursor"),
        ("/runs", {"created_after": "last tuesday"}, "created_after"),
        ("/runs", {"stauts": "failed"}, "stauts"),
        ("/runs", {"status": ["failed", "running"]}, "status"),
        ("/hooks", {"cursor": "!!"}, "cursor"),
        ("/hooks", {"limit": "-3"}, "limit"),
        ("/hooks", {"run": "x"}, "run"),
    ],
)
async def test_bad_queries_are_400_and_change_nothing(
    rt: af.Runtime, served: Any, path: str, params: dict[str, Any], names: str
) -> None:
    run = await rt.start(fails)
    await wait_until(lambda: rt.state.runs[run.run_id].status == "failed")
    await rt.wait_idle()
    before = rt.state.events
    async with served(rt) as client:
        response = await _get(client, path, **params)
    assert response.status_code == 400
    assert response.json()["error"] == "InvalidQueryError"
    assert names in response.json()["message"]
    assert rt.state.events == before


async def test_unknown_runs_are_404(rt: af.Runtime, served: Any) -> None:
    async with served(rt) as client:
        events = await _get(client, "/runs/wrun_missing/events")
        hooks = await _get(client, "/hooks", run_id="wrun_missing")
        bad_after = await _get(client, "/runs/wrun_missing/events", after="-1")
    assert events.status_code == 404 and events.json()["error"] == "WorkflowRunNotFoundError"
    assert hooks.status_code == 404
    assert bad_after.status_code == 400


async def test_the_listing_routes_need_the_bearer_secret(rt: af.Runtime, served: Any) -> None:
    async with served(rt) as client:
        for path in ("/runs", "/hooks", "/runs/wrun_x/events"):
            response = await client.get(f"{PREFIX}{path}")
            assert response.status_code == 401, path
            wrong = await client.get(f"{PREFIX}{path}", headers={"authorization": "Bearer no"})
            assert wrong.status_code == 401, path
    async with served(rt, resume_secret=None) as client:
        for path in ("/runs", "/hooks", "/runs/wrun_x/events"):
            assert (await client.get(f"{PREFIX}{path}", headers=AUTH)).status_code == 404


async def test_hooks_and_events_routes(rt: af.Runtime, served: Any) -> None:
    run = await rt.start(waits, "h")
    await wait_for_hook(rt, "w:h")
    async with served(rt) as client:
        hooks = (await _get(client, "/hooks")).json()
        assert [h["token"] for h in hooks["items"]] == ["w:h"]
        hook = hooks["items"][0]
        assert hook["kind"] == "hook" and hook["run_id"] == run.run_id
        assert hook["buffered"] == 0 and hook["received"] == 0
        only = (await _get(client, "/hooks", run_id=run.run_id)).json()
        assert [h["token"] for h in only["items"]] == ["w:h"]
        resumed = await client.post(
            f"{PREFIX}/hooks/resume", json={"token": "w:h", "payload": {"n": 1}}, headers=AUTH
        )
        assert resumed.status_code == 200
        assert await run.result() == "{'n': 1}"
        timeline = (await _get(client, f"/runs/{run.run_id}/events")).json()
        types = [e["type"] for e in timeline["items"]]
        assert types[0] == "run_created" and types[-1] == "run_completed"
        received = next(e for e in timeline["items"] if e["type"] == "hook_received")
        assert received["data"]["payload"] == {"n": 1}
        later = (await _get(client, f"/runs/{run.run_id}/events", after=2, limit=1)).json()
        assert [e["seq"] for e in later["items"]] == [3]
        assert later["next_cursor"] == "3"
        assert (await _get(client, "/hooks")).json()["items"] == []


async def test_get_run_has_times_and_what_it_waits_on(rt: af.Runtime, served: Any) -> None:
    napping = await rt.start(sleeps)
    hooked = await rt.start(waits, "g")
    await wait_for_hook(rt, "w:g")
    await wait_until(lambda: bool(rt.state.timers))
    async with served(rt) as client:
        nap = (await _get(client, f"/runs/{napping.run_id}")).json()
        assert nap["workflow_name"] == "sleeps" and nap["workflow"] == "sleeps"
        assert nap["started_at"] is not None and nap["completed_at"] is None
        assert len(nap["waiting_on"]["sleeps"]) == 1
        assert nap["waiting_on"]["sleeps"][0]["until"] > nap["created_at"]
        body = (await _get(client, f"/runs/{hooked.run_id}")).json()
        assert [h["token"] for h in body["waiting_on"]["hooks"]] == ["w:g"]
        await client.post(f"{PREFIX}/runs/{hooked.run_id}/cancel", headers=AUTH)
        ended = (await _get(client, f"/runs/{hooked.run_id}")).json()
        assert ended["status"] == "cancelled" and ended["completed_at"] is not None
        assert ended["waiting_on"] == {"hooks": [], "sleeps": [], "steps": []}


async def test_concurrent_starts_over_http_never_break_paging(rt: af.Runtime, served: Any) -> None:
    async with served(rt) as client:
        for _ in range(12):
            response = await client.post(f"{PREFIX}/runs", json={"workflow": "fails"}, headers=AUTH)
            assert response.status_code == 201
        await rt.wait_idle()
        listed = (await _get(client, "/runs")).json()["items"]
        seen: list[str] = []
        started: list[str] = []
        cursor = None

        async def start_one() -> None:
            response = await client.post(f"{PREFIX}/runs", json={"workflow": "fails"}, headers=AUTH)
            started.append(response.json()["run_id"])

        while True:
            params: dict[str, Any] = {"limit": 5}
            if cursor:
                params["cursor"] = cursor
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(start_one)
                page = (await _get(client, "/runs", **params)).json()
            seen.extend(r["run_id"] for r in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        # The first page may include runs started alongside it; none is ever shown twice, and
        # every run that existed before paging began is shown.
        assert len(seen) == len(set(seen))
        assert {r["run_id"] for r in listed} <= set(seen)
        assert seen == sorted(seen, reverse=True)


async def test_the_openapi_document_describes_the_listings(rt: af.Runtime, served: Any) -> None:
    async with served(rt) as client:
        document = (await client.get(f"{PREFIX}/openapi.json")).json()
    paths = document["paths"]
    assert paths[f"{PREFIX}/runs"]["get"]["operationId"] == "list_runs"
    assert paths[f"{PREFIX}/hooks"]["get"]["operationId"] == "list_hooks"
    assert paths[f"{PREFIX}/runs/{{run_id}}/events"]["get"]["operationId"] == "list_events"
    assert "waiting_on" in document["components"]["schemas"]["Run"]["properties"]
