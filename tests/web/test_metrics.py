"""``GET /metrics`` on a real server: the counters, gauges and histograms move as they should.

Every value is read back through the Prometheus text format (parsed by ``prometheus_client``'s
own parser), from a real Hypercorn, on both workers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import HangingFsync, wait_for_hook, wait_until
from tests.web.conftest import wait_for_hooks

import actorflow as af
from actorflow.errors import HookNotFoundError, HookPayloadError, IdempotencyKeyConflictError
from actorflow.runtime.core import events as ev
from actorflow.runtime.core.events import Event
from actorflow.runtime.log.file_log import FileLog
from actorflow.runtime.state import RunState

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Decision:
    approved: bool


Decisions = af.define_hook(Decision)


@af.workflow
async def approval(order_id: str) -> Any:
    return await af.create_hook(token=f"approval:{order_id}")


@af.workflow
async def typed(order_id: str) -> bool:
    decision = await Decisions.create(token=f"typed:{order_id}")
    return decision.approved


@af.workflow
async def fails(message: str) -> None:
    raise ValueError(message)


@af.workflow
async def webhook_once() -> int:
    request = await af.create_webhook()
    return len(request.body)


WORKFLOWS = [approval, typed, fails, webhook_once]


@pytest.fixture
async def rt(data_dir: Path) -> AsyncIterator[af.Runtime]:
    # fsync on: the sync histogram measures real fsyncs.
    async with af.Runtime(data_dir, WORKFLOWS) as runtime:
        yield runtime


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


async def test_the_counters_and_gauges_follow_what_the_runtime_does(
    rt: af.Runtime, served: Any
) -> None:
    async with served(rt) as client:
        before = await scrape(client)
        assert value(before, "actorflow_runs_started_total") == 0
        assert value(before, "actorflow_live_runs") == 0

        done = await rt.start(approval, "done")
        failed = await rt.start(fails, "boom")
        cancelled = await rt.start(approval, "cancel-me")
        await rt.start(typed, "wait")
        hooked = await rt.start(webhook_once)
        for token in ("approval:done", "approval:cancel-me", "typed:wait"):
            await wait_for_hook(rt, token)
        [webhook_token] = await wait_for_hooks(rt, hooked.run_id)
        with pytest.raises(af.WorkflowRunFailedError):
            await failed.result()
        middle = await scrape(client)
        assert value(middle, "actorflow_runs_started_total") == 5
        assert value(middle, "actorflow_runs_failed_total") == 1
        assert value(middle, "actorflow_live_runs") == 4
        assert value(middle, "actorflow_live_hooks") == 4

        await rt.resume_hook("approval:done", {"ok": 1}, idempotency_key="k")
        with pytest.raises(IdempotencyKeyConflictError):
            await rt.resume_hook("approval:done", {"ok": 2}, idempotency_key="k")
        with pytest.raises(HookNotFoundError):
            await rt.resume_hook("no-such-token", 1)
        with pytest.raises(HookPayloadError):
            await rt.resume_hook("typed:wait", {"approved": "maybe"})
        # Over HTTP too: the webhook, a wrong webhook token, the bearer resume route.
        accepted = await client.post(
            f"/.well-known/workflow/v1/webhook/{webhook_token}", content=b"xy"
        )
        unknown = await client.post("/.well-known/workflow/v1/webhook/nope", content=b"")
        assert (accepted.status_code, unknown.status_code) == (202, 404)
        await rt.cancel_run(cancelled.run_id)
        assert await done.result() == {"ok": 1}
        assert await hooked.result() == 2
        await rt.wait_idle()
        after = await scrape(client)

    assert value(after, "actorflow_runs_started_total") == 5
    assert value(after, "actorflow_runs_completed_total") == 2
    assert value(after, "actorflow_runs_failed_total") == 1
    assert value(after, "actorflow_runs_cancelled_total") == 1
    assert value(after, "actorflow_live_runs") == 1  # typed:wait, still waiting
    assert value(after, "actorflow_live_hooks") == 1
    resumes = {
        outcome: value(after, "actorflow_resumes_total", outcome=outcome)
        for outcome in ("delivered", "conflict", "not_found", "invalid", "overloaded", "error")
    }
    assert resumes == {"delivered": 1, "conflict": 1, "not_found": 1, "invalid": 1,
                       "overloaded": 0, "error": 0}  # fmt: skip
    assert value(after, "actorflow_webhook_deliveries_total", outcome="accepted") == 1
    assert value(after, "actorflow_webhook_deliveries_total", outcome="not_found") == 1
    # Only acknowledged resumes are timed; each took at least an fsync.
    assert value(after, "actorflow_resume_ack_seconds_count") == 1
    assert value(after, "actorflow_resume_ack_seconds_sum") > 0
    syncs = value(after, "actorflow_log_sync_seconds_count")
    assert syncs >= 1 and syncs > value(middle, "actorflow_log_sync_seconds_count")
    assert value(after, "actorflow_log_backlog") == 0
    assert value(after, "actorflow_log_events") == rt.state.events
    assert value(after, "actorflow_log_bytes") > value(before, "actorflow_log_bytes") > 0
    assert value(after, "actorflow_mailbox_backlog") == 0


async def test_metrics_need_no_secret_and_two_runtimes_count_apart(
    tmp_path: Path, served: Any
) -> None:
    async with (
        af.Runtime(tmp_path / "a", WORKFLOWS, durability="none") as one,
        af.Runtime(tmp_path / "b", WORKFLOWS, durability="none") as two,
    ):
        await one.start(fails, "x")
        await one.start(fails, "y")
        await two.start(fails, "z")
        await one.wait_idle()
        await two.wait_idle()
        # No resume secret at all: /metrics is still served, like /healthz.
        async with served(one, resume_secret=None) as client:
            first = await scrape(client)
        async with served(two) as client:
            second = await scrape(client)
    assert value(first, "actorflow_runs_started_total") == 2
    assert value(second, "actorflow_runs_started_total") == 1


async def test_the_log_backlog_shows_events_waiting_for_their_fsync(
    data_dir: Path, served: Any
) -> None:
    """While an fsync hangs, the resume is not acknowledged and the backlog says so."""
    fsync = HangingFsync()
    store = FileLog(data_dir / "log", fsync=fsync)
    async with af.Runtime(data_dir, WORKFLOWS, store=store) as rt:
        slow = await rt.start(approval, "slow")
        await wait_for_hook(rt, "approval:slow")
        await rt.wait_idle()
        async with served(rt) as client, anyio.create_task_group() as tg:
            # A one-event batch is waited for blocked unless recent syncs were slow, which a
            # loaded machine can make them even here: start from a known-fast disk.
            rt.journal.writer.sync_estimate = 0.0
            fsync.hang = True
            acknowledged = anyio.Event()

            async def resume() -> None:
                await rt.resume_hook("approval:slow", 1)
                acknowledged.set()

            tg.start_soon(resume)
            await wait_until(fsync.syncing.is_set)
            stuck = await scrape(client)
            fsync.hang = False
            fsync.release.set()
            await acknowledged.wait()
            await slow.wait()  # its run_completed is durable too: nothing left waiting
            after = await scrape(client)
    assert value(stuck, "actorflow_log_backlog") >= 1
    assert value(stuck, "actorflow_resumes_total", outcome="delivered") == 0
    # The loop waited for that fsync blocked for a moment only, then served the scrape.
    assert value(stuck, "actorflow_log_sync_overruns_total") == 1
    assert value(after, "actorflow_log_backlog") == 0
    assert value(after, "actorflow_resumes_total", outcome="delivered") == 1


def test_the_mailbox_backlog_counts_messages_no_actor_has_taken(data_dir: Path) -> None:
    rt = af.Runtime(data_dir, WORKFLOWS)
    run = RunState("wrun_m", "approval", 0.0)
    for n in range(3):
        rt.supervisor.deliver(run, Event(f"evnt_{n}", "wrun_m", ev.HOOK_RECEIVED, "h", 0.0, {}))
    samples = parse(generate_latest(rt.metrics.registry).decode())
    assert value(samples, "actorflow_mailbox_backlog") == 3


def test_the_resume_histogram_counts_a_value_on_a_bound_in_that_bucket() -> None:
    # The counts are plain numbers turned into a histogram when scraped; "le" is inclusive,
    # as prometheus_client's own Histogram has it.
    from actorflow.runtime.metrics import _Deliveries

    deliveries = _Deliveries(("delivered",), (0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 0.01, 3.0):
        deliveries.observe(seconds)
    family = deliveries.histogram("h", "doc")
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "h_bucket"}
    assert buckets == {"0.001": 2, "0.01": 4, "+Inf": 5}
    assert [s.value for s in family.samples if s.name == "h_count"] == [5]
