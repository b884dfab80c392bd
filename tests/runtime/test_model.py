"""The programming model in a running runtime: steps, gather/first, determinism, passivation.

Backend-neutral (asyncio and trio through anyio's plugin); nothing here waits on a timer.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from tests.conftest import drop_machines, read_events, wait_for_hook, wait_until

import actorflow as af

pytestmark = pytest.mark.anyio

#: Side effects of steps and workflow code, observed by the tests (keyed by a per-test label).
executions: Counter[str] = Counter()
observed: dict[str, list[Any]] = {}


# -- steps ----------------------------------------------------------------------------------


@af.step
async def effect(label: str, value: int) -> dict[str, Any]:
    executions[label] += 1
    meta = af.get_step_metadata()
    wf = af.get_workflow_metadata()
    return {"value": value * 2, "step_id": meta.step_id, "attempt": meta.attempt, "run": wf.run_id}


@af.workflow
async def steps_then_hook(label: str) -> list[Any]:
    first_result = await effect(label, 1)
    hook = af.create_hook(token=f"steps:{label}")
    payload = await hook
    second = await effect(label, payload)
    return [first_result, second]


async def test_step_results_are_recorded_and_not_rerun_after_passivation(
    tmp_path: Path, anyio_backend: str
) -> None:
    label = f"passivate-{anyio_backend}"
    async with af.Runtime(tmp_path, workflows=[steps_then_hook], passivate_after=0) as rt:
        run = await rt.start(steps_then_hook, label)
        await wait_for_hook(rt, f"steps:{label}")
        await wait_until(lambda: rt.supervisor.resident == 0)  # passivated: coroutine dropped
        rebuilt = rt.supervisor.rebuilt
        await rt.resume_hook(f"steps:{label}", 5)
        first_result, second = await run.result()
        assert rt.supervisor.rebuilt > rebuilt  # replayed from the log to take the payload
    assert executions[label] == 2  # one per step call, none on replay
    assert first_result["value"] == 2 and second["value"] == 10
    assert first_result["run"] == run.run_id and first_result["attempt"] == 1
    assert first_result["step_id"] != second["step_id"]
    started = [e.correlation_id for e in read_events(tmp_path / "log") if e.type == "step_started"]
    assert started == [first_result["step_id"], second["step_id"]]


async def test_step_results_are_not_rerun_after_a_restart(
    tmp_path: Path, anyio_backend: str
) -> None:
    label = f"restart-{anyio_backend}"
    async with af.Runtime(tmp_path, workflows=[steps_then_hook]) as rt:
        run = await rt.start(steps_then_hook, label)
        await wait_for_hook(rt, f"steps:{label}")
    assert executions[label] == 1
    async with af.Runtime(tmp_path, workflows=[steps_then_hook]) as rt:
        await wait_for_hook(rt, f"steps:{label}")
        await rt.resume_hook(f"steps:{label}", 3)
        first_result, second = await rt.get_run(run.run_id).result()
    assert executions[label] == 2
    assert [first_result["value"], second["value"]] == [2, 6]


@af.step
async def plain_add(a: int, b: int) -> int:
    return a + b


async def test_a_step_called_outside_a_workflow_is_a_plain_coroutine() -> None:
    assert await plain_add(2, 3) == 5
    with pytest.raises(af.WorkflowDefinitionError):
        af.get_step_metadata()
    with pytest.raises(af.WorkflowDefinitionError):
        af.get_workflow_metadata()
    with pytest.raises(af.WorkflowDefinitionError):
        af.now()


# -- gather and first ---------------------------------------------------------------------------


@af.workflow
async def gather_hooks(tag: str) -> list[Any]:
    hooks = [af.create_hook(token=f"g{i}:{tag}") for i in range(3)]
    return await af.gather(*hooks, plain_add(1, 2))


async def test_gather_returns_results_in_argument_order(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[gather_hooks]) as rt:
        run = await rt.start(gather_hooks, "r")
        for i in (2, 1, 0):  # resumed in reverse order
            await wait_for_hook(rt, f"g{i}:r")
            await rt.resume_hook(f"g{i}:r", f"p{i}")
        assert await run.result() == ["p0", "p1", "p2", 3]


@af.step(max_retries=0)
async def refuse(reason: str) -> None:
    raise af.FatalError(reason)


@af.workflow
async def gather_failure(tag: str) -> Any:
    hook = af.create_hook(token=f"gf:{tag}")
    try:
        await af.gather(hook, refuse("first failure"), refuse("second failure"))
    except af.FatalError as exc:
        outcome = str(exc)
    # The gather is over; the hook it held is still usable.
    return [outcome, await hook]


async def test_gather_propagates_the_first_failure(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[gather_failure]) as rt:
        run = await rt.start(gather_failure, "s")
        await wait_for_hook(rt, "gf:s")
        # Both steps were started with the hook; let them fail before the payload comes, or
        # the gather's hook awaiter would take it.
        await wait_until(lambda: not rt.state.steps)
        await rt.wait_idle()
        await rt.resume_hook("gf:s", "later")
        outcome, later = await run.result()
    assert outcome in ("first failure", "second failure")
    assert later == "later"


@af.workflow
async def first_of_hooks(tag: str) -> Any:
    a = af.create_hook(token=f"fa:{tag}")
    b = af.create_hook(token=f"fb:{tag}")
    index, value = await af.first(a, b)
    return [index, value, await a]


async def test_first_returns_index_and_value_and_leaves_the_loser_usable(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[first_of_hooks]) as rt:
        run = await rt.start(first_of_hooks, "t")
        await wait_for_hook(rt, "fb:t")
        await rt.resume_hook("fb:t", "b wins")
        await rt.resume_hook("fa:t", "a later")
        assert await run.result() == [1, "b wins", "a later"]


# -- determinism ---------------------------------------------------------------------------------


@af.workflow
async def deterministic(label: str) -> list[Any]:
    values = [af.now().isoformat(), af.random(), str(af.uuid4())]
    observed.setdefault(label, []).append(values)  # once live, once per replay
    hook = af.create_hook()  # a random token: stable across replay as well
    observed[label].append(hook.token)
    await hook
    return values


async def test_now_random_uuid4_and_random_tokens_are_equal_across_replay(
    tmp_path: Path, anyio_backend: str
) -> None:
    label = f"det-{anyio_backend}"
    async with af.Runtime(tmp_path, workflows=[deterministic], passivate_after=0) as rt:
        run = await rt.start(deterministic, label)
        await wait_until(lambda: len(observed.get(label, [])) == 2)
        token = observed[label][1]
        assert len(token) >= 22  # 128 bits or more, URL-safe
        await wait_until(lambda: rt.supervisor.resident == 0)
    async with af.Runtime(tmp_path, workflows=[deterministic]) as rt:
        await wait_for_hook(rt, token)
        await rt.resume_hook(token, None)
        result = await rt.get_run(run.run_id).result()
    live, live_token, replayed, replayed_token = observed[label][:4]
    assert live == replayed == result
    assert live_token == replayed_token == token
    assert 0 <= live[1] < 1


# -- awaiting something that is not a primitive -------------------------------------------------


class Foreign:
    def __await__(self) -> Any:
        yield "a foreign trap"


@af.workflow
async def awaits_foreign(kind: str) -> Any:
    if kind == "custom":
        await Foreign()
    elif kind == "anyio-caught":
        try:
            await anyio.sleep(1)
        except af.NonDeterministicAwaitError as exc:
            return ["caught", str(exc)]
    else:
        await anyio.sleep(5)
    return "unreachable"


async def test_awaiting_a_foreign_awaitable_fails_the_run(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[awaits_foreign]) as rt:
        run = await rt.start(awaits_foreign, "custom")
        with pytest.raises(af.WorkflowRunFailedError) as info:
            await run.result()
    cause = info.value.cause
    assert isinstance(cause, af.NonDeterministicAwaitError)
    assert "a foreign trap" in str(cause) and "step" in str(cause)


async def test_awaiting_anyio_sleep_raises_in_the_workflow_where_it_can_be_caught(
    tmp_path: Path, anyio_backend: str
) -> None:
    async with af.Runtime(tmp_path, workflows=[awaits_foreign]) as rt:
        run = await rt.start(awaits_foreign, "anyio-caught")
        outcome, message = await run.result()
    assert outcome == "caught" and "@af.step" in message


async def test_the_error_names_the_offending_awaitable(tmp_path: Path, anyio_backend: str) -> None:
    async with af.Runtime(tmp_path, workflows=[awaits_foreign]) as rt:
        run = await rt.start(awaits_foreign, "anyio")
        with pytest.raises(af.WorkflowRunFailedError) as info:
            await run.result()
    cause = info.value.cause
    assert isinstance(cause, af.NonDeterministicAwaitError)
    assert re.search(r"anyio\S*\.sleep\(\)", str(cause)), str(cause)


# -- passivation ---------------------------------------------------------------------------------


@af.workflow
async def two_payloads(tag: str) -> list[Any]:
    hook = af.create_hook(token=f"pv:{tag}")
    return [await hook, await hook]


async def test_passivated_runs_are_rebuilt_on_demand(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[two_payloads], passivate_after=0) as rt:
        runs = [await rt.start(two_payloads, str(i)) for i in range(5)]

        def all_passivated() -> bool:  # no live machine, nothing being rebuilt
            return all(rt.state.runs[run.run_id].actor is None for run in runs)

        for i in range(5):
            await wait_for_hook(rt, f"pv:{i}")
        await wait_until(all_passivated)
        for i in range(5):
            await rt.resume_hook(f"pv:{i}", f"{i}a")
        await wait_until(lambda: rt.supervisor.rebuilt >= 5 and all_passivated())
        for i in range(5):
            await rt.resume_hook(f"pv:{i}", f"{i}b")
        for i, run in enumerate(runs):
            assert await run.result() == [f"{i}a", f"{i}b"]
        assert rt.supervisor.rebuilt >= 10


async def test_max_resident_bounds_live_coroutines(tmp_path: Path) -> None:
    async with af.Runtime(
        tmp_path, workflows=[two_payloads], max_resident=2, passivate_after=math.inf
    ) as rt:
        runs = [await rt.start(two_payloads, f"m{i}") for i in range(6)]
        for i in range(6):
            await wait_for_hook(rt, f"pv:m{i}")
        assert rt.supervisor.resident <= 2
        for _ in range(2):
            for i in range(6):
                await rt.resume_hook(f"pv:m{i}", i)
                assert rt.supervisor.resident <= 2
        for i, run in enumerate(runs):
            assert await run.result() == [i, i]


# -- values that cannot be stored, bad arguments ------------------------------------------------


@af.step
async def returns_unstorable() -> Any:
    return object()


@af.workflow
async def misuse(kind: str) -> Any:
    if kind == "bad-sleep":
        caught = []
        for bad in (-1, "soon", datetime(2030, 1, 1)):  # negative, not a duration, naive
            try:
                await af.sleep(bad)
            except af.WorkflowDefinitionError as exc:
                caught.append(type(exc).__name__)
        return caught
    if kind == "step-result":
        try:
            await returns_unstorable()
        except af.SerializationError as exc:
            return ["step failed", "object" in str(exc)]
    if kind == "result":
        return object()
    return None


async def test_bad_sleep_arguments_raise_at_the_await(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[misuse]) as rt:
        run = await rt.start(misuse, "bad-sleep")
        assert await run.result() == ["WorkflowDefinitionError"] * 3
        assert rt.state.timers == {}


async def test_an_unstorable_step_result_fails_the_step_not_the_runtime(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[misuse]) as rt:
        run = await rt.start(misuse, "step-result")
        assert await run.result() == ["step failed", True]


async def test_an_unstorable_workflow_result_fails_the_run(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[misuse]) as rt:
        run = await rt.start(misuse, "result")
        with pytest.raises(af.WorkflowRunFailedError) as info:
            await run.result()
        assert isinstance(info.value.cause, af.SerializationError)


async def test_unstorable_start_arguments_commit_nothing(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[misuse]) as rt:
        with pytest.raises(af.SerializationError):
            await rt.start(misuse, object())
        with pytest.raises(af.WorkflowDefinitionError):
            await rt.start(plain_add, 1, 2)  # type: ignore[arg-type]
        assert rt.state.runs == {}
    assert read_events(tmp_path / "log") == []


running_steps: dict[str, int] = {}


@af.step
async def blocks_until_cancelled(label: str) -> None:
    running_steps[label] = running_steps.get(label, 0) + 1
    try:
        await anyio.sleep_forever()
    finally:
        running_steps[label] -= 1


@af.workflow
async def runs_a_long_step(label: str) -> None:
    await blocks_until_cancelled(label)


async def test_cancel_stops_the_runs_step(tmp_path: Path, anyio_backend: str) -> None:
    label = f"cancel-step-{anyio_backend}"
    async with af.Runtime(tmp_path, workflows=[runs_a_long_step]) as rt:
        run = await rt.start(runs_a_long_step, label)
        await wait_until(lambda: running_steps.get(label) == 1)
        await run.cancel()
        await wait_until(lambda: running_steps[label] == 0)  # the attempt was cancelled
        assert rt.state.steps == {}
        with pytest.raises(af.WorkflowRunCancelledError):
            await run.result()
    types = [e.type for e in read_events(tmp_path / "log")]
    assert "step_completed" not in types and "step_failed" not in types


# -- a step's code is outside the workflow ------------------------------------------------------


@af.step
async def inner_step(x: int) -> int:
    return x + 1


@af.step(max_retries=0)  # fail at once: no real backoff in tests
async def outer_step(x: int) -> list[Any]:
    from actorflow.runtime.core.machine import current_machine

    in_workflow = current_machine() is not None
    try:
        af.now()
        now_raises = False
    except af.WorkflowDefinitionError:
        now_raises = True
    return [await inner_step(x), in_workflow, now_raises]


@af.workflow
async def nests_steps(x: int) -> list[Any]:
    return await outer_step(x)


async def test_a_step_calling_a_step_gets_a_plain_coroutine(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[nests_steps]) as rt:
        run = await rt.start(nests_steps, 1)
        assert await run.result() == [2, False, True]


# -- metadata, bounded step concurrency ---------------------------------------------------------


@af.step
async def step_meta() -> list[Any]:
    step = af.get_step_metadata()
    wf = af.get_workflow_metadata()
    return [step.step_id, step.attempt, step.started_at.tzinfo is not None, wf.run_id]


@af.workflow(name="metadata-flow")
async def metadata_flow() -> list[Any]:
    meta = af.get_workflow_metadata()
    in_step = await step_meta()
    return [meta.run_id, meta.workflow_name, meta.started_at.tzinfo is not None, meta.url, in_step]


async def test_workflow_and_step_metadata(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[metadata_flow]) as rt:
        run = await rt.start("metadata-flow")
        run_id, name, aware, url, in_step = await run.result()
    assert (run_id, name, aware, url) == (run.run_id, "metadata-flow", True, None)
    step_id, attempt, step_aware, step_run = in_step
    assert step_id.startswith("step_") and attempt == 1 and step_aware and step_run == run.run_id


concurrency = {"running": 0, "peak": 0}
release: dict[str, anyio.Event] = {}


@af.step
async def limited(label: str, i: int) -> int:
    concurrency["running"] += 1
    concurrency["peak"] = max(concurrency["peak"], concurrency["running"])
    try:
        await release[label].wait()
    finally:
        concurrency["running"] -= 1
    return i


@af.workflow
async def many_steps(label: str) -> list[Any]:
    return await af.gather(*[limited(label, i) for i in range(6)])


async def test_steps_run_with_bounded_concurrency(tmp_path: Path, anyio_backend: str) -> None:
    label = f"limited-{anyio_backend}"
    release[label] = anyio.Event()
    concurrency.update(running=0, peak=0)
    async with af.Runtime(tmp_path, workflows=[many_steps], max_concurrent_steps=2) as rt:
        run = await rt.start(many_steps, label)
        await wait_until(lambda: len(rt.state.steps) == 6 and concurrency["running"] == 2)
        for _ in range(100):
            await anyio.lowlevel.checkpoint()
        assert concurrency["running"] == 2
        release[label].set()
        assert await run.result() == list(range(6))
    assert concurrency["peak"] == 2


# -- workflow code must not be able to take the runtime down ------------------------------------


@af.workflow
async def scoped(tag: str) -> Any:
    with anyio.move_on_after(3600):  # a user's try at a timeout: binds to the runtime's task
        return await af.create_hook(token=f"scoped:{tag}")
    return "timed out"


async def test_a_workflow_entering_a_cancel_scope_fails_alone(tmp_path: Path) -> None:
    """Two runs suspend inside scopes and would exit them out of order; the deadline variant
    is in test_virtual_time.py."""
    rt: af.Runtime | None = None
    try:
        async with af.Runtime(tmp_path, workflows=[scoped, two_payloads]) as runtime:
            rt = runtime
            runs = {}
            for tag in ("a", "b"):  # both suspend inside their scopes (or fail there: fine)
                runs[tag] = state = rt.state.runs[(await rt.start(scoped, tag)).run_id]
                await wait_until(
                    lambda t=tag, s=state: f"scoped:{t}" in rt.state.tokens or s.finished
                )
            for tag in ("a", "b"):  # a's scope is exited while b's is the innermost
                with contextlib.suppress(af.HookNotFoundError):
                    await rt.resume_hook(f"scoped:{tag}", tag)
            for state in runs.values():
                await rt.get_run(state.run_id).wait()
            healthy = await rt.start(two_payloads, "after-scopes")
            await wait_for_hook(rt, "pv:after-scopes")
            await rt.resume_hook("pv:after-scopes", 1)
            await rt.resume_hook("pv:after-scopes", 2)
            assert await healthy.result() == [1, 2]
    finally:
        if rt is not None:
            drop_machines(rt)
