"""The web inspector and /metrics on the shared PostgreSQL store.

Two nodes share a schema; the inspector is served by node ``a`` and acts on runs that node
``b`` owns: it lists them, shows their timeline, resumes their hook and cancels them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.postgres.conftest import Database, require_psycopg
from tests.web.conftest import Served, _served

require_psycopg()

import actorflow as af  # noqa: E402
from actorflow.runtime.log.postgres_cluster import ClusterLog  # noqa: E402

pytestmark = pytest.mark.anyio

SECRET = "test-resume-secret-0123456789"
UI = "/.well-known/workflow/v1/ui"


@af.workflow
async def waits(name: str) -> str:
    return str(await af.create_hook(token=f"pgui:{name}"))


@pytest.fixture
def served() -> Served:
    return _served


@pytest.fixture
async def nodes(
    pg_database: Database, pg_schema: str, tmp_path: Path
) -> AsyncIterator[tuple[af.Runtime, af.Runtime]]:
    async with AsyncExitStack() as stack:
        made = []
        for name in ("a", "b"):
            store = ClusterLog(pg_database.dsn, node_id=name, schema=pg_schema, durability="none")
            rt = af.Runtime(tmp_path / name, [waits], store=store, poll_interval=0.05)
            made.append(await stack.enter_async_context(rt))
        yield made[0], made[1]


async def _status(run: af.Run, status: str) -> None:
    await run.wait(timeout=20)  # polls the database for a run another node owns
    assert await run.status() == status


async def _hook(rt: af.Runtime, token: str) -> None:
    with anyio.fail_after(20):
        while True:
            try:
                await rt.get_hook_by_token(token)
                return
            except af.HookNotFoundError:
                await anyio.sleep(0.01)


async def _csrf(client: httpx.AsyncClient) -> str:
    signed = await client.post(f"{UI}/login", data={"secret": SECRET, "next": f"{UI}/"})
    assert signed.status_code == 303
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', (await client.get(f"{UI}/")).text)
    assert found is not None
    return found.group(1)


async def test_one_node_inspects_and_acts_on_another_nodes_runs(
    nodes: tuple[af.Runtime, af.Runtime], served: Any
) -> None:
    a, b = nodes
    resumed = await b.start(waits, "resume")
    cancelled = await b.start(waits, "cancel")
    await _hook(b, "pgui:resume")
    await _hook(b, "pgui:cancel")
    async with served(a) as client:
        csrf = await _csrf(client)
        listing = await client.get(f"{UI}/", params={"workflow": "waits"})
        assert re.findall(r'href="[^"]*/runs/(wrun_[0-9a-f]+)"', listing.text) == [
            cancelled.run_id,
            resumed.run_id,
        ]
        page = await client.get(f"{UI}/runs/{resumed.run_id}")
        assert page.status_code == 200
        assert "pgui:resume" in page.text and "hook_created" in page.text
        bad = await client.post(
            f"{UI}/runs/{resumed.run_id}/resume",
            data={"csrf": csrf, "token": "pgui:resume", "payload": "{nope"},
        )
        assert bad.status_code == 400
        good = await client.post(
            f"{UI}/runs/{resumed.run_id}/resume",
            data={"csrf": csrf, "token": "pgui:resume", "payload": '"from a"'},
        )
        assert good.status_code == 303
        await _status(resumed, "completed")
        assert await resumed.result() == "from a"
        cancel = await client.post(f"{UI}/runs/{cancelled.run_id}/cancel", data={"csrf": csrf})
        assert cancel.status_code == 303
        await _status(cancelled, "cancelled")
        done = await client.get(f"{UI}/runs/{resumed.run_id}")
        assert "run_completed" in done.text and "&#34;from a&#34;" in done.text


async def test_metrics_on_postgres(nodes: tuple[af.Runtime, af.Runtime], served: Any) -> None:
    a, _ = nodes
    run = await a.start(waits, "metrics")
    await _hook(a, "pgui:metrics")
    await a.resume_hook("pgui:metrics", 1)
    await _status(run, "completed")
    async with served(a) as client:
        response = await client.get("/metrics")
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if not sample.labels or sample.labels.get("outcome") == "delivered"
    }
    assert samples["actorflow_runs_started_total"] == 1
    assert samples["actorflow_runs_completed_total"] == 1
    assert samples["actorflow_resumes_total"] == 1
    assert samples["actorflow_log_sync_seconds_count"] >= 1  # each batch's commit
    assert "actorflow_log_bytes" not in samples  # the file log's size only
