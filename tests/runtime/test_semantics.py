"""The hook semantics of issue 2, end to end on a real file log, on asyncio and on trio.

Each test names the rule it proves. Durability is real (``durability="fsync"``, the default)
wherever the rule is about what is on disk; elsewhere too, since the runs here are short.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.conftest import (
    RecordingStore,
    read_events,
    resume_when_ready,
    wait_for_hook,
    wait_until,
)

import actorflow as af
from actorflow.runtime.log.file_log import FileLog

pytestmark = pytest.mark.anyio


def recording_runtime(tmp_path: Path, *workflows: Any, **options: Any) -> af.Runtime:
    store = RecordingStore(FileLog(tmp_path / "log"))
    return af.Runtime(tmp_path, workflows=workflows, store=store, **options)


# -- resume_hook is durable and does not wait for the workflow ----------------------------------


@af.workflow
async def gated(tag: str) -> Any:
    """Creates its hook, then waits on a gate first: a payload on ``tag`` must wait in a buffer."""
    hook = af.create_hook(token=f"late:{tag}")
    gate = af.create_hook(token=f"gate:{tag}")
    await gate
    return await hook


async def test_resume_hook_returns_after_hook_received_is_synced(tmp_path: Path) -> None:
    async with recording_runtime(tmp_path, gated) as rt:
        store = rt.store
        assert isinstance(store, RecordingStore)
        run = await rt.start(gated, "a")
        await wait_for_hook(rt, "late:a")
        await wait_for_hook(rt, "gate:a")
        record = await rt.resume_hook("late:a", {"n": 1})
        # On disk when resume_hook returned: appended, then fsynced.
        assert "hook_received" in store.synced_types()
        # ... and the workflow has not taken it: it is still waiting on its gate.
        assert await run.status() == "running"
        assert record.token == "late:a" and record.run_id == run.run_id
        await rt.resume_hook("gate:a", None)
        assert await run.result() == {"n": 1}


async def test_resume_hook_does_not_wait_for_the_workflow(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[gated]) as rt:
        run = await rt.start(gated, "b")
        await wait_for_hook(rt, "late:b")
        # The workflow never awaits "late:b" before "gate:b" is resumed: resume must not block.
        with anyio.fail_after(10):
            await rt.resume_hook("late:b", "payload")
        assert await run.status() == "running"
    # Reopen the directory: the payload is there, though the workflow never saw it.
    kinds = [(e.type, e.data.get("token")) for e in read_events(tmp_path / "log")]
    assert ("hook_received", "late:b") in kinds


async def test_hook_not_found_commits_nothing(tmp_path: Path) -> None:
    async with recording_runtime(tmp_path, gated) as rt:
        store = rt.store
        assert isinstance(store, RecordingStore)
        run = await rt.start(gated, "c")
        # Both hooks: the run is quiet only once its last hook exists (on a shared store each
        # chosen token is claimed in the database, one after the other).
        await wait_for_hook(rt, "late:c")
        await wait_for_hook(rt, "gate:c")
        await rt.wait_idle()
        before = store.records
        with pytest.raises(af.HookNotFoundError) as info:
            await rt.resume_hook("no-such-token", {"n": 1})
        assert info.value.token == "no-such-token"
        with pytest.raises(af.HookNotFoundError):
            await rt.get_hook_by_token("no-such-token")
        await rt.wait_idle()
        assert store.records == before
        await run.cancel()


async def test_serialization_error_commits_nothing(tmp_path: Path) -> None:
    async with recording_runtime(tmp_path, gated) as rt:
        store = rt.store
        assert isinstance(store, RecordingStore)
        run = await rt.start(gated, "d")
        # Both hooks: the run is quiet only once its last hook exists (on a shared store each
        # chosen token is claimed in the database, one after the other).
        await wait_for_hook(rt, "late:d")
        await wait_for_hook(rt, "gate:d")
        await rt.wait_idle()
        before = store.records
        with pytest.raises(af.SerializationError):
            await rt.resume_hook("late:d", {"f": lambda: None})
        with pytest.raises(af.SerializationError):
            await rt.resume_hook("late:d", object(), idempotency_key="k")
        await rt.wait_idle()
        assert store.records == before
        # The hook is unharmed: a good payload still goes through.
        await rt.resume_hook("late:d", 7)
        await rt.resume_hook("gate:d", None)
        assert await run.result() == 7


# -- buffering and order ---------------------------------------------------------------------


@af.workflow
async def collect(tag: str, count: int) -> list[Any]:
    """Resumed many times before it looks; then takes every payload with ``async for``."""
    hook = af.create_hook(token=f"many:{tag}")
    gate = af.create_hook(token=f"go:{tag}")
    await gate
    got = []
    async for payload in hook:
        got.append(payload)
        if len(got) == count:
            break
    return got


async def test_buffered_payloads_arrive_in_log_order_exactly_once(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[collect]) as rt:
        run = await rt.start(collect, "e", 20)
        await wait_for_hook(rt, "many:e")
        await wait_for_hook(rt, "go:e")
        for i in range(10):  # all before the workflow awaits the hook: buffered
            await rt.resume_hook("many:e", i)
        await rt.resume_hook("go:e", None)
        async with anyio.create_task_group() as tg:  # the rest concurrently, while it iterates

            async def send(i: int) -> None:
                await rt.resume_hook("many:e", i)

            for i in range(10, 20):
                tg.start_soon(send, i)
        result = await run.result()
    logged = [
        e.data["payload"]
        for e in read_events(tmp_path / "log")
        if e.type == "hook_received" and e.data.get("token") == "many:e"
    ]
    assert result == logged  # in log order, each once
    assert sorted(result) == list(range(20))
    assert result[:10] == list(range(10))


@af.workflow
async def iterate_until_disposed(tag: str) -> list[Any]:
    hook = af.create_hook(token=f"iter:{tag}")
    got = []
    async for payload in hook:
        got.append(payload)
        if payload == "stop":
            hook.dispose()
    return got


async def test_async_for_yields_payloads_in_order_until_disposed(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[iterate_until_disposed]) as rt:
        run = await rt.start(iterate_until_disposed, "f")
        await wait_for_hook(rt, "iter:f")
        for payload in ["a", "b", "c", "stop"]:
            await rt.resume_hook("iter:f", payload)
        assert await run.result() == ["a", "b", "c", "stop"]


# -- first(hook, sleep) ------------------------------------------------------------------------


@af.workflow
async def race_hook(tag: str) -> Any:
    hook = af.create_hook(token=f"race:{tag}")
    index, value = await af.first(hook, af.sleep("7d"))
    return [index, value]


async def test_first_hook_wins_and_the_sleep_leaves_no_live_timer(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[race_hook]) as rt:
        run = await rt.start(race_hook, "g")
        await wait_for_hook(rt, "race:g")
        assert len(rt.state.timers) == 1
        await rt.resume_hook("race:g", "yes")
        assert await run.result() == [0, "yes"]
        assert rt.state.timers == {}
    events = read_events(tmp_path / "log")
    created = [e for e in events if e.type == "wait_created"]
    cancelled = [e for e in events if e.type == "wait_cancelled"]
    assert len(created) == 1 and len(cancelled) == 1
    assert cancelled[0].correlation_id == created[0].correlation_id
    assert not [e for e in events if e.type == "wait_completed"]


# -- tokens: freed after dispose and after the run ends; never shared -----------------------------


@af.workflow
async def dispose_then_wait(tag: str, how: str) -> str:
    hook = af.create_hook(token=f"tok:{tag}")
    gate = af.create_hook(token=f"tokgate:{tag}")
    if how == "with":
        with hook:
            pass
    else:
        hook.dispose()
    await gate
    return "done"


@pytest.mark.parametrize("how", ["dispose", "with"])
async def test_token_is_free_after_dispose(tmp_path: Path, how: str) -> None:
    async with af.Runtime(tmp_path, workflows=[dispose_then_wait, gated]) as rt:
        run = await rt.start(dispose_then_wait, "h", how)
        await wait_for_hook(rt, "tokgate:h")
        with pytest.raises(af.HookNotFoundError):
            await rt.resume_hook("tok:h", 1)
        with pytest.raises(af.HookNotFoundError):
            await rt.get_hook_by_token("tok:h")
        # Another run can take the token now.
        other = await rt.start(gated, "x")
        await wait_for_hook(rt, "gate:x")
        await rt.resume_hook("tokgate:h", None)
        assert await run.result() == "done"
        await other.cancel()


@af.workflow
async def holds(tag: str, end: str) -> str:
    af.create_hook(token=f"held:{tag}")
    gate = af.create_hook(token=f"end:{tag}")
    await gate
    if end == "fail":
        raise ValueError("asked to fail")
    return "ok"


@pytest.mark.parametrize("end", ["complete", "fail", "cancel"])
async def test_token_is_free_after_the_run_ends(tmp_path: Path, end: str) -> None:
    async with af.Runtime(tmp_path, workflows=[holds]) as rt:
        run = await rt.start(holds, "i", end)
        await wait_for_hook(rt, "held:i")
        await wait_for_hook(rt, "end:i")
        if end == "cancel":
            await run.cancel("test")
        else:
            await rt.resume_hook("end:i", None)
        await run.wait()
        assert await run.status() == {"complete": "completed", "fail": "failed"}.get(
            end, "cancelled"
        )
        for token in ("held:i", "end:i"):
            with pytest.raises(af.HookNotFoundError):
                await rt.resume_hook(token, 1)
        # Free for a new run's hook.
        again = await rt.start(holds, "i", "complete")
        await wait_for_hook(rt, "held:i")
        assert (await rt.get_hook_by_token("held:i")).run_id == again.run_id
        await wait_for_hook(rt, "end:i")
        await rt.resume_hook("end:i", None)
        assert await again.result() == "ok"


@af.workflow
async def claim(token: str) -> Any:
    hook = af.create_hook(token=token)
    try:
        return ["got", await hook]
    except af.HookConflictError as exc:
        return ["conflict", exc.token, exc.conflicting_run_id]


async def test_two_live_hooks_never_share_a_token(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[claim]) as rt:
        first = await rt.start(claim, "shared")
        await wait_for_hook(rt, "shared")
        second = await rt.start(claim, "shared")
        assert await second.result() == ["conflict", "shared", first.run_id]
        # The holder is unaffected and still owns the token.
        assert (await rt.get_hook_by_token("shared")).run_id == first.run_id
        await rt.resume_hook("shared", "mine")
        assert await first.result() == ["got", "mine"]
    events = read_events(tmp_path / "log")
    conflicts = [e for e in events if e.type == "hook_conflict"]
    assert [e.run_id for e in conflicts] == [second.run_id]


@af.workflow
async def conflict_then_wait(token: str, gate: str) -> Any:
    hook = af.create_hook(token=token)
    outcome: Any
    try:
        outcome = ["got", await hook]
    except af.HookConflictError as exc:
        outcome = ["conflict", exc.conflicting_run_id]
    await af.create_hook(token=gate)
    return outcome


async def test_a_conflict_is_recorded_so_replay_sees_it_again(tmp_path: Path) -> None:
    """The loser replays after a restart, when the token is free: it must still see the conflict."""
    async with af.Runtime(tmp_path, workflows=[claim, conflict_then_wait]) as rt:
        holder = await rt.start(claim, "contested")
        await wait_for_hook(rt, "contested")
        loser = await rt.start(conflict_then_wait, "contested", "gate:loser")
        await wait_for_hook(rt, "gate:loser")
        await rt.resume_hook("contested", "holder's")
        assert await holder.result() == ["got", "holder's"]
    async with af.Runtime(tmp_path, workflows=[claim, conflict_then_wait]) as rt:
        await wait_for_hook(rt, "gate:loser")
        with pytest.raises(af.HookNotFoundError):  # the loser never held the token
            await rt.resume_hook("contested", "stolen?")
        await rt.resume_hook("gate:loser", None)
        assert await rt.get_run(loser.run_id).result() == ["conflict", holder.run_id]


# -- idempotency keys ----------------------------------------------------------------------------


async def test_same_idempotency_key_twice_delivers_once(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[collect]) as rt:
        run = await rt.start(collect, "j", 2)
        await wait_for_hook(rt, "many:j")
        await wait_for_hook(rt, "go:j")
        one = await rt.resume_hook("many:j", {"v": 1}, idempotency_key="k1")
        again = await rt.resume_hook("many:j", {"v": 1}, idempotency_key="k1")
        assert again == one
        await rt.resume_hook("many:j", {"v": 2}, idempotency_key="k2")
        await rt.resume_hook("go:j", None)
        assert await run.result() == [{"v": 1}, {"v": 2}]
    received = [e for e in read_events(tmp_path / "log") if e.type == "hook_received"]
    assert [e.data.get("idempotency_key") for e in received] == ["k1", "k2", None]


async def test_same_idempotency_key_with_another_payload_conflicts(tmp_path: Path) -> None:
    async with recording_runtime(tmp_path, collect) as rt:
        store = rt.store
        assert isinstance(store, RecordingStore)
        run = await rt.start(collect, "k", 1)
        await wait_for_hook(rt, "many:k")
        await wait_for_hook(rt, "go:k")
        await rt.resume_hook("many:k", "first", idempotency_key="key")
        await rt.wait_idle()
        before = store.records
        with pytest.raises(af.IdempotencyKeyConflictError) as info:
            await rt.resume_hook("many:k", "second", idempotency_key="key")
        assert info.value.idempotency_key == "key" and info.value.token == "many:k"
        await rt.wait_idle()
        assert store.records == before
        await rt.resume_hook("go:k", None)
        assert await run.result() == ["first"]


@af.workflow
async def approval_once(n: int) -> Any:
    return await af.create_hook(token="approval:reused")


async def test_an_idempotency_key_does_not_cross_to_a_new_hook_on_the_same_token(
    tmp_path: Path,
) -> None:
    async with af.Runtime(tmp_path, workflows=[approval_once]) as rt:
        first_run = await rt.start(approval_once, 1)
        await resume_when_ready(rt, "approval:reused", "yes", idempotency_key="delivery-1")
        assert await first_run.result() == "yes"
        second_run = await rt.start(approval_once, 2)
        await wait_for_hook(rt, "approval:reused")
        record = await rt.resume_hook("approval:reused", "yes", idempotency_key="delivery-1")
        assert record.run_id == second_run.run_id
        with anyio.fail_after(10):
            assert await second_run.result() == "yes"


async def test_idempotent_retry_after_the_run_ended_returns_the_record(tmp_path: Path) -> None:
    """A retry whose first delivery was acknowledged gets the same record, not a 404."""
    async with af.Runtime(tmp_path, workflows=[collect]) as rt:
        run = await rt.start(collect, "l", 1)
        first = await resume_when_ready(rt, "many:l", "x", idempotency_key="once")
        await wait_for_hook(rt, "go:l")
        await rt.resume_hook("go:l", None)
        assert await run.result() == ["x"]
        assert await rt.resume_hook("many:l", "x", idempotency_key="once") == first


# -- the Hook record ----------------------------------------------------------------------------


@af.workflow
async def with_metadata(tag: str) -> Any:
    hook = af.create_hook(token=f"meta:{tag}", metadata={"amount": 120})
    return await hook


async def test_hook_record_fields(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[with_metadata]) as rt:
        run = await rt.start(with_metadata, "m")
        await wait_for_hook(rt, "meta:m")
        record = await rt.get_hook_by_token("meta:m")
        assert record.run_id == run.run_id
        assert record.hook_id.startswith("hook_")
        assert record.metadata == {"amount": 120}
        assert record.is_webhook is False
        assert record.created_at.tzinfo is not None
        assert isinstance(record.spec_version, int)
        assert record.to_json()["token"] == "meta:m"
        with pytest.raises(AttributeError):
            record.token = "other"  # type: ignore[misc]
        assert await rt.resume_hook("meta:m", 1) == record
        assert await run.result() == 1


@af.workflow
async def twice_with_metadata(tag: str) -> Any:
    hook = af.create_hook(token=f"meta:{tag}", metadata={"amount": 120})
    return [await hook, await hook]


async def test_hook_records_never_share_mutable_metadata(tmp_path: Path) -> None:
    # The record is kept on the hook's entry (its metadata decoded once), yet each caller gets
    # metadata of its own: changing one caller's copy changes no other answer.
    async with af.Runtime(tmp_path, workflows=[twice_with_metadata]) as rt:
        run = await rt.start(twice_with_metadata, "s")
        await wait_for_hook(rt, "meta:s")
        first = await rt.resume_hook("meta:s", 1)
        first.metadata["amount"] = 0
        assert (await rt.get_hook_by_token("meta:s")).metadata == {"amount": 120}
        second = await rt.resume_hook("meta:s", 2)
        assert second.metadata == {"amount": 120}
        assert second.metadata is not first.metadata
        assert await run.result() == [1, 2]


# -- cancel -------------------------------------------------------------------------------------


@af.workflow
async def waits_everywhere(tag: str) -> None:
    hook = af.create_hook(token=f"cancel:{tag}")
    await af.first(hook, af.sleep("1d"))


async def test_cancel_frees_tokens_and_timers(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[waits_everywhere]) as rt:
        run = await rt.start(waits_everywhere, "n")
        await wait_for_hook(rt, "cancel:n")
        await wait_until(lambda: len(rt.state.timers) == 1)
        await run.cancel(reason="no longer needed")
        assert await run.status() == "cancelled"
        with pytest.raises(af.WorkflowRunCancelledError) as info:
            await run.result()
        assert info.value.reason == "no longer needed"
        assert rt.state.timers == {}
        assert rt.state.tokens == {}
        with pytest.raises(af.HookNotFoundError):
            await rt.resume_hook("cancel:n", 1)
        await run.cancel()  # a no-op once ended
    async with af.Runtime(tmp_path, workflows=[waits_everywhere]) as rt:
        assert await rt.get_run(run.run_id).status() == "cancelled"
        assert rt.state.timers == {} and rt.state.tokens == {}


async def test_missing_run(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path) as rt:
        handle = rt.get_run("wrun_missing")  # never raises
        with pytest.raises(af.WorkflowRunNotFoundError):
            await handle.status()
        with pytest.raises(af.WorkflowRunNotFoundError):
            await handle.result()
        with pytest.raises(af.WorkflowRunNotFoundError):
            await handle.cancel()


# -- more hook edges ------------------------------------------------------------------------------


@af.workflow
async def same_token_twice(tag: str) -> Any:
    first_hook = af.create_hook(token=f"twice:{tag}")
    second_hook = af.create_hook(token=f"twice:{tag}")  # the run holds it already
    try:
        await second_hook
    except af.HookConflictError as exc:
        conflict = exc.conflicting_run_id
    first_hook.dispose()
    third = af.create_hook(token=f"twice:{tag}")  # free again after the dispose
    return [conflict, await third]


async def test_a_run_conflicts_with_its_own_live_hook_and_can_reuse_a_disposed_token(
    tmp_path: Path,
) -> None:
    async with af.Runtime(tmp_path, workflows=[same_token_twice]) as rt:
        run = await rt.start(same_token_twice, "u")
        # The workflow runs from its start to the third hook in one turn of its machine, so
        # once the token is live it belongs to the third hook.
        await wait_for_hook(rt, "twice:u")
        await rt.resume_hook("twice:u", "third")
        assert await run.result() == [run.run_id, "third"]
    types = [e.type for e in read_events(tmp_path / "log")]
    assert types.count("hook_created") == 2 and types.count("hook_conflict") == 1


async def test_resume_hook_accepts_a_hook_record(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[with_metadata]) as rt:
        run = await rt.start(with_metadata, "v")
        await wait_for_hook(rt, "meta:v")
        record = await rt.get_hook_by_token("meta:v")
        assert await rt.resume_hook(record, "by record") == record
        assert await run.result() == "by record"


async def test_concurrent_resumes_with_one_idempotency_key_deliver_once(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[collect]) as rt:
        run = await rt.start(collect, "w", 1)
        await wait_for_hook(rt, "many:w")
        records: list[af.Hook] = []

        async def resume() -> None:
            records.append(await rt.resume_hook("many:w", {"once": True}, idempotency_key="k"))

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(resume)
        assert len(records) == 10 and all(r == records[0] for r in records)
        await rt.resume_hook("go:w", None)
        assert await run.result() == [{"once": True}]
    received = [e for e in read_events(tmp_path / "log") if e.type == "hook_received"]
    assert [e.data.get("token") for e in received] == ["many:w", "go:w"]


async def test_a_full_mailbox_refuses_with_overloaded_and_commits_nothing(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[collect], mailbox_size=2) as rt:
        run = await rt.start(collect, "x", 100)
        await wait_for_hook(rt, "many:x")
        accepted: list[int] = []
        refused: list[af.OverloadedError] = []

        async def resume(i: int) -> None:
            try:
                await rt.resume_hook("many:x", i)
                accepted.append(i)
            except af.OverloadedError as exc:
                refused.append(exc)

        async with anyio.create_task_group() as tg:  # all admitted before any is durable
            for i in range(10):
                tg.start_soon(resume, i)
        assert refused and len(accepted) + len(refused) == 10
        assert all(exc.retry_after > 0 for exc in refused)
        await run.cancel()
    received = [
        e.data["payload"] for e in read_events(tmp_path / "log") if e.type == "hook_received"
    ]
    assert sorted(received) == sorted(accepted)


@af.workflow
async def take_one_then_dispose(tag: str) -> list[Any]:
    hook = af.create_hook(token=f"stop:{tag}")
    got = []
    async for payload in hook:
        got.append(payload)
        hook.dispose()  # done listening; whatever was accepted before this is still ours
    return got


@af.workflow
async def buffered_then_dispose(tag: str) -> list[Any]:
    hook = af.create_hook(token=f"stop:{tag}")
    await af.create_hook(token=f"stop-gate:{tag}")
    got = []
    async for payload in hook:
        got.append(payload)
        hook.dispose()
    return got


async def test_payloads_buffered_before_the_dispose_are_still_yielded(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[buffered_then_dispose]) as rt:
        run = await rt.start(buffered_then_dispose, "z")
        await wait_for_hook(rt, "stop-gate:z")
        await wait_for_hook(rt, "stop:z")
        await rt.resume_hook("stop:z", "a")
        await rt.resume_hook("stop:z", "b")
        await rt.resume_hook("stop-gate:z", None)
        assert await run.result() == ["a", "b"]


async def test_a_payload_accepted_before_the_dispose_is_not_lost(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[take_one_then_dispose]) as rt:
        run = await rt.start(take_one_then_dispose, "y")
        await wait_for_hook(rt, "stop:y")
        async with anyio.create_task_group() as tg:  # both accepted while the hook is live
            tg.start_soon(rt.resume_hook, "stop:y", "a")
            tg.start_soon(rt.resume_hook, "stop:y", "b")
        result = await run.result()
    logged = [
        (e.type, e.data.get("payload"))
        for e in read_events(tmp_path / "log")
        if e.type in ("hook_received", "hook_disposed")
    ]
    # Both payloads were durable (acknowledged) before the hook was disposed...
    assert [kind for kind, _ in logged] == ["hook_received", "hook_received", "hook_disposed"]
    # ... so both must reach the workflow, as they do when they were buffered before it looked.
    assert result == [payload for _, payload in logged[:2]]
