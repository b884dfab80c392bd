"""The query API on the file log: list_runs, list_hooks, list_events and Run.info.

Every test runs on asyncio and trio. Exactly-once properties are checked by run id, never by
counts: paging must hand out each run id once, none missing.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.conftest import resume_when_ready, wait_for_hook, wait_until

import actorflow as af
from actorflow.runtime.core import events as ev
from actorflow.runtime.core.events import Event
from actorflow.runtime.ids import new_id
from actorflow.runtime.log.file_log import FileLog
from actorflow.runtime.payloads import Payloads

pytestmark = pytest.mark.anyio

KEY = "q8q9v2Ylq4Zc0rj0mX9y2q8q9v2Ylq4Zc0rj0mX9y2o="


@af.workflow
async def waits(name: str) -> str:
    decision = await af.create_hook(token=f"wait:{name}")
    return f"{name}:{decision}"


@af.workflow
async def fails(message: str) -> None:
    raise ValueError(message)


@af.workflow
async def done(value: int) -> int:
    return value


@af.workflow
async def sleeps() -> None:
    await af.sleep("1h")


@af.step(max_retries=3)
async def flaky() -> None:
    raise af.RetryableError("not yet", retry_after="1h")


@af.workflow
async def retries() -> None:
    await flaky()


@af.workflow
async def hooks_and_webhook() -> None:
    hook = af.create_hook(token="many:1")
    af.create_webhook()
    await hook


WORKFLOWS = [waits, fails, done, sleeps, retries, hooks_and_webhook]


def runtime(tmp_path: Path, **options: Any) -> af.Runtime:
    return af.Runtime(tmp_path / "data", WORKFLOWS, durability="none", **options)


async def settle(rt: af.Runtime, runs: list[af.Run], status: str) -> None:
    for run in runs:
        await wait_until(lambda run=run: rt.state.runs[run.run_id].status == status)  # type: ignore[misc]
    await rt.wait_idle()


async def test_an_empty_runtime_lists_nothing(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        page = await rt.list_runs()
        assert page.items == () and page.next_cursor is None
        assert (await rt.list_hooks()).items == ()


async def test_runs_are_listed_newest_first_with_their_times(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        first = await rt.start(done, 1)
        second = await rt.start(fails, "boom")
        third = await rt.start(waits, "a")
        await settle(rt, [first], "completed")
        await settle(rt, [second], "failed")
        await wait_for_hook(rt, "wait:a")
        page = await rt.list_runs()
        assert [r.run_id for r in page.items] == [third.run_id, second.run_id, first.run_id]
        by_id = {r.run_id: r for r in page.items}
        ended = by_id[first.run_id]
        assert ended.workflow_name == "done" and ended.status == "completed"
        assert ended.started_at is not None and ended.completed_at is not None
        assert ended.created_at <= ended.started_at <= ended.completed_at
        assert ended.created_at.tzinfo is UTC
        assert by_id[second.run_id].status == "failed"
        waiting = by_id[third.run_id]
        assert waiting.status == "running" and waiting.completed_at is None
        assert waiting.version is None
        assert ended.to_json()["created_at"] == ended.created_at.isoformat()


async def test_filters_by_status_workflow_and_creation_time(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        ok = [await rt.start(done, i) for i in range(3)]
        bad = [await rt.start(fails, f"e{i}") for i in range(2)]
        await settle(rt, ok, "completed")
        await settle(rt, bad, "failed")
        failed = await rt.list_runs(status="failed")
        assert [r.run_id for r in failed.items] == [r.run_id for r in reversed(bad)]
        named = await rt.list_runs(workflow="done")
        assert {r.run_id for r in named.items} == {r.run_id for r in ok}
        assert (await rt.list_runs(workflow="done", status="failed")).items == ()
        assert (await rt.list_runs(workflow="nothing-by-that-name")).items == ()
        created = {r.run_id: r.created_at for r in (await rt.list_runs()).items}
        pivot = created[bad[0].run_id]
        # Two starts can read the same clock time: the bounds are exclusive.
        newer = await rt.list_runs(created_after=pivot)
        assert {r.run_id for r in newer.items} == {k for k, t in created.items() if t > pivot}
        assert bad[1].run_id in {r.run_id for r in newer.items} or created[bad[1].run_id] == pivot
        older = await rt.list_runs(created_before=pivot.isoformat())
        assert {r.run_id for r in older.items} == {k for k, t in created.items() if t < pivot}
        epoch = await rt.list_runs(created_before=pivot.timestamp() + 1e-3, status="completed")
        assert {r.run_id for r in epoch.items} == {r.run_id for r in ok}
        assert (await rt.list_runs(created_after=pivot + timedelta(days=1))).items == ()


async def test_pages_hand_out_each_run_once_while_runs_start(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        before = [await rt.start(done, i) for i in range(23)]
        await settle(rt, before, "completed")
        seen: list[str] = []
        started_meanwhile: list[str] = []
        cursor = None
        while True:
            page = await rt.list_runs(limit=5, cursor=cursor)
            seen.extend(r.run_id for r in page.items)
            # Runs started between pages are newer than every cursor: never in a later page.
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(_start_into, rt, started_meanwhile, i)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == [r.run_id for r in reversed(before)]
        assert len(set(seen)) == len(seen)
        assert not set(started_meanwhile) & set(seen)
        # A fresh listing shows them all, each once.
        everything: list[str] = []
        cursor = None
        while True:
            page = await rt.list_runs(limit=7, cursor=cursor)
            everything.extend(r.run_id for r in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert sorted(everything) == sorted(seen + started_meanwhile)
        assert everything == sorted(everything, reverse=True)


async def _start_into(rt: af.Runtime, into: list[str], value: int) -> None:
    into.append((await rt.start(done, value)).run_id)


async def test_a_status_page_follows_status_changes_without_repeats(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        runs = [await rt.start(waits, f"s{i}") for i in range(6)]
        for i in range(6):
            await wait_for_hook(rt, f"wait:s{i}")
        first = await rt.list_runs(status="running", limit=3)
        assert [r.run_id for r in first.items] == [r.run_id for r in runs[::-1][:3]]
        # The newest runs complete: the next page of running runs still starts at the cursor.
        for i in (5, 4):
            await rt.resume_hook(f"wait:s{i}", "ok")
        await settle(rt, runs[4:], "completed")
        second = await rt.list_runs(status="running", limit=3, cursor=first.next_cursor)
        assert [r.run_id for r in second.items] == [r.run_id for r in runs[2::-1]]
        assert second.next_cursor is None
        completed = await rt.list_runs(status="completed")
        assert [r.run_id for r in completed.items] == [runs[5].run_id, runs[4].run_id]


@pytest.mark.parametrize(
    "arguments",
    [
        {"status": "done"},
        {"status": ""},
        {"workflow": ""},
        {"workflow": 7},
        {"limit": 0},
        {"limit": 1001},
        {"limit": "ten"},
        {"limit": True},
        {"cursor": "nope"},
        {"cursor": "wrun_XYZ"},
        {"cursor": 12},
        {"created_after": "yesterday"},
        {"created_before": datetime(2026, 1, 1)},  # naive: which zone?
        {"created_after": [1]},
    ],
)
async def test_bad_filters_are_refused_and_change_nothing(
    tmp_path: Path, arguments: dict[str, Any]
) -> None:
    async with runtime(tmp_path) as rt:
        run = await rt.start(done, 1)
        await settle(rt, [run], "completed")
        events = rt.state.events
        with pytest.raises(af.InvalidQueryError) as caught:
            await rt.list_runs(**arguments)
        assert isinstance(caught.value, ValueError)
        name = next(iter(arguments))
        assert name in str(caught.value)
        assert rt.state.events == events


async def test_bad_hook_and_event_queries(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        run = await rt.start(done, 1)
        await settle(rt, [run], "completed")
        with pytest.raises(af.InvalidQueryError, match="cursor"):
            await rt.list_hooks(cursor="%%%")
        with pytest.raises(af.InvalidQueryError, match="limit"):
            await rt.list_hooks(limit=-1)
        with pytest.raises(af.InvalidQueryError, match="after"):
            await rt.list_events(run.run_id, after=-1)
        with pytest.raises(af.InvalidQueryError, match="after"):
            await rt.list_events(run.run_id, after="x")
        with pytest.raises(af.WorkflowRunNotFoundError):
            await rt.list_events("wrun_" + "0" * 32)
        with pytest.raises(af.WorkflowRunNotFoundError):
            await rt.list_hooks("wrun_missing")
        with pytest.raises(af.WorkflowRunNotFoundError):
            await rt.get_run("wrun_missing").info()


async def test_run_info_says_what_a_run_waits_on(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        hooked = await rt.start(hooks_and_webhook)
        sleeping = await rt.start(sleeps)
        retrying = await rt.start(retries)
        await wait_for_hook(rt, "many:1")
        await wait_until(lambda: any(s.retry_at for s in rt.state.steps.values()))
        await wait_until(lambda: bool(rt.state.timers))

        info = await hooked.info()
        assert info.workflow_name == "hooks_and_webhook" and info.status == "running"
        kinds = sorted((h.token == "many:1", h.is_webhook) for h in info.waiting_on.hooks)
        assert kinds == [(False, True), (True, False)]
        assert all(h.since >= info.created_at for h in info.waiting_on.hooks)

        nap = (await sleeping.info()).waiting_on
        assert nap.hooks == () and nap.steps == () and len(nap.sleeps) == 1
        assert nap.sleeps[0].until - (await sleeping.info()).created_at >= timedelta(minutes=59)

        step = (await retrying.info()).waiting_on.steps
        assert len(step) == 1 and step[0].name.endswith("flaky")
        assert step[0].attempt == 2 and step[0].next_retry_at is not None
        assert step[0].next_retry_at - step[0].started_at >= timedelta(minutes=59)

        await rt.cancel_run(hooked.run_id)
        ended = await hooked.info()
        assert ended.status == "cancelled" and ended.completed_at is not None
        assert ended.waiting_on == af.WaitingOn()
        assert ended.to_json()["waiting_on"] == {"hooks": [], "sleeps": [], "steps": []}


async def test_list_hooks_shows_live_hooks_with_kind_and_buffer(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        a = await rt.start(waits, "a")
        b = await rt.start(hooks_and_webhook)
        await wait_for_hook(rt, "wait:a")
        await wait_for_hook(rt, "many:1")
        every = await rt.list_hooks()
        assert len(every.items) == 3
        assert [h.token for h in every.items] == sorted(h.token for h in every.items)
        by_token = {h.token: h for h in every.items}
        assert by_token["wait:a"].run_id == a.run_id and by_token["wait:a"].kind == "hook"
        assert sorted(h.kind for h in every.items if h.run_id == b.run_id) == ["hook", "webhook"]
        assert by_token["wait:a"].received == 0 and by_token["wait:a"].buffered == 0
        only_b = await rt.list_hooks(b.run_id)
        assert {h.run_id for h in only_b.items} == {b.run_id}
        # Paging by token, each hook once.
        paged: list[str] = []
        cursor = None
        while True:
            page = await rt.list_hooks(limit=1, cursor=cursor)
            paged.extend(h.token for h in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert paged == [h.token for h in every.items]
        await rt.resume_hook("wait:a", "yes")
        assert await a.result() == "a:yes"
        assert "wait:a" not in {h.token for h in (await rt.list_hooks()).items}


async def test_list_events_is_the_timeline_in_pages(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        run = await rt.start(waits, "t")
        await resume_when_ready(rt, "wait:t", {"ok": True})
        assert await run.result() == "t:{'ok': True}"
        page = await rt.list_events(run.run_id)
        types = [e.type for e in page.items]
        assert types[0] == "run_created" and types[-1] == "run_completed"
        assert "hook_received" in types
        assert [e.seq for e in page.items] == list(range(1, len(types) + 1))
        received = next(e for e in page.items if e.type == "hook_received")
        assert received.data["payload"] == {"ok": True}
        assert received.correlation_id is not None
        # The seed every webhook token of the run derives from stays out of the timeline.
        assert page.items[0].data["token_seed"] == "hidden"
        stored = rt.payloads.decode(rt.store.read([rt.state.runs[run.run_id].positions[0]])[0])
        assert len(stored.data["token_seed"]) > 20
        # Two at a time, after= the last seq seen.
        walked: list[str] = []
        after: int | str = 0
        while True:
            part = await rt.list_events(run.run_id, after=after, limit=2)
            walked.extend(e.event_id for e in part.items)
            if part.next_cursor is None:
                break
            after = part.next_cursor
        assert walked == [e.event_id for e in page.items]
        assert (await rt.list_events(run.run_id, after=len(types))).items == ()


async def test_events_are_decrypted_or_shown_as_encrypted(tmp_path: Path) -> None:
    async with runtime(tmp_path, encryption_key=KEY) as rt:
        run = await rt.start(done, 41)
        assert await run.result() == 41
        events = await rt.list_events(run.run_id)
        created = events.items[0]
        assert created.data["input"] == {"args": [41], "kwargs": {}}
        run_id = run.run_id
    async with runtime(tmp_path, encryption_key=KEY) as rt:
        completed = (await rt.list_events(run_id)).items[-1]
        assert completed.type == "run_completed" and completed.data["result"] == 41
    # Without the key the values stay sealed; ids, types and times still show.
    reader = af.Runtime(tmp_path / "data", durability="none")
    reader.payloads = Payloads(None)
    from actorflow.runtime.catalog import MemoryCatalog

    store = FileLog(tmp_path / "data" / "log", durability="none")
    try:
        for position, record in store.scan():
            event = reader.payloads.decode_plain(record, position)
            reader.state.apply(event)
            reader.state.runs[event.run_id].positions.append(position)
        catalog = MemoryCatalog(reader.state, store.read, reader.payloads)
        sealed = await catalog.list_events(run_id, 0, 50)
    finally:
        store.close()
    assert sealed.items[0].data["input"] == "encrypted"
    assert sealed.items[-1].data["result"] == "encrypted"
    assert sealed.items[-1].type == "run_completed"


async def test_the_version_of_run_created_is_shown_and_filtered(tmp_path: Path) -> None:
    # Written the way a runtime that stamps versions (issue 17) writes run_created.
    log = FileLog(tmp_path / "data" / "log", durability="none")
    assert list(log.scan()) == []
    payloads = Payloads(None)
    ids = []
    now = time.time()  # recent: runs that ended in 2001 would have expired (retention, 7d)
    for version in ("v1", "v2", None, 3):
        run_id = new_id("wrun_")
        data: dict[str, Any] = {"workflow": "done", "input": {"args": [1], "kwargs": {}}}
        if version is not None:
            data["version"] = version
        ids.append(run_id)
        event = Event(new_id("evnt_"), run_id, ev.RUN_CREATED, None, now, data)
        cancel = Event(new_id("evnt_"), run_id, ev.RUN_CANCELLED, None, now + 1, {})
        log.append([payloads.encode(event), payloads.encode(cancel)])
    log.close()
    async with runtime(tmp_path) as rt:
        listed = {r.run_id: r.version for r in (await rt.list_runs()).items}
        assert listed == dict(zip(ids, ["v1", "v2", None, "3"], strict=True))
        assert [r.run_id for r in (await rt.list_runs(version="v2")).items] == [ids[1]]
        assert [r.run_id for r in (await rt.list_runs(version=3)).items] == [ids[3]]
        assert (await rt.get_run(ids[0]).info()).version == "v1"


async def test_forget_removes_a_run_from_every_listing(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        runs = [await rt.start(fails, f"f{i}") for i in range(3)]
        await settle(rt, runs, "failed")
        assert len((await rt.list_runs(status="failed")).items) == 3
        rt.state.forget(runs[1].run_id)
        rt.state.forget("wrun_never_there")
        for page in (
            await rt.list_runs(),
            await rt.list_runs(status="failed"),
            await rt.list_runs(workflow="fails"),
        ):
            assert [r.run_id for r in page.items] == [runs[2].run_id, runs[0].run_id]


async def test_the_index_is_rebuilt_at_recovery(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        ok = await rt.start(done, 1)
        bad = await rt.start(fails, "x")
        waiting = await rt.start(waits, "r")
        await settle(rt, [ok], "completed")
        await settle(rt, [bad], "failed")
        await wait_for_hook(rt, "wait:r")
        before = (await rt.list_runs()).items
    async with runtime(tmp_path) as rt:
        after = (await rt.list_runs()).items
        assert [(r.run_id, r.status) for r in after] == [(r.run_id, r.status) for r in before]
        assert [r.run_id for r in (await rt.list_runs(status="running")).items] == [waiting.run_id]
        await resume_when_ready(rt, "wait:r", 1)
        await settle(rt, [waiting], "completed")
        statuses = {r.run_id: r.status for r in (await rt.list_runs()).items}
        assert statuses[waiting.run_id] == "completed"


async def test_the_api_functions_act_on_the_current_runtime(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        run = await af.api.start(waits, "api")
        await wait_for_hook(rt, "wait:api")
        assert [r.run_id for r in (await af.api.list_runs()).items] == [run.run_id]
        assert [h.token for h in (await af.api.list_hooks(run.run_id)).items] == ["wait:api"]
        assert (await af.api.list_events(run.run_id)).items[0].type == "run_created"
