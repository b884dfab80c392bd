"""Issue 17: deploying new code while runs are in flight, on a real file log, asyncio and trio.

Each kind of change a deploy can make to a workflow's durable calls is made between a stop and
a start. With the default (``on_divergence="park"``) no run fails: it is parked, records why
once, keeps its hook (deliveries are accepted and buffered, up to the mailbox bound, and keyed
retries are recognised), its timers and its history, and when the original code returns it
completes exactly once with every payload, checked by payload id. ``tests/postgres/
test_core_on_postgres.py`` runs these tests again on PostgreSQL, unchanged.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.conftest import read_events, wait_for_hook, wait_until

import actorflow as af
from actorflow.runtime.runtime import Runtime
from actorflow.runtime.workflow import UnstableNameWarning

pytestmark = pytest.mark.anyio


# -- the code as first deployed, and each kind of change -----------------------------------------


@af.step
async def reserve(item: str) -> str:
    return f"reserved {item}"


@af.step
async def charge(amount: int) -> int:
    return amount


@af.step
async def audit(tag: str) -> str:
    return f"audited {tag}"


def _step_in_module(module: str) -> Any:
    async def ship(order: str) -> str:
        return f"shipped {order}"

    # What a default step name is made of: moving the module changes the name.
    ship.__module__ = module
    ship.__qualname__ = "ship"
    return af.step(ship)


ship = _step_in_module("shop.shipping")
ship_moved = _step_in_module("shop.logistics.shipping")  # the module was renamed


async def _collect(tag: str) -> list[Any]:
    hook = af.create_hook(token=f"deploy:{tag}")
    return [await hook for _ in range(3)]


@af.workflow(name="deploy_order")
async def original(tag: str) -> dict[str, Any]:
    steps = [await reserve("book"), await charge(12), await ship(tag)]
    return {"steps": steps, "payloads": await _collect(tag)}


@af.workflow(name="deploy_order")
async def added_step(tag: str) -> dict[str, Any]:
    steps = [await reserve("book"), await audit(tag), await charge(12), await ship(tag)]
    return {"steps": steps, "payloads": await _collect(tag)}


@af.workflow(name="deploy_order")
async def removed_step(tag: str) -> dict[str, Any]:
    steps = [await reserve("book"), await ship(tag)]
    return {"steps": steps, "payloads": await _collect(tag)}


@af.workflow(name="deploy_order")
async def reordered_calls(tag: str) -> dict[str, Any]:
    steps = [await charge(12), await reserve("book"), await ship(tag)]
    return {"steps": steps, "payloads": await _collect(tag)}


@af.workflow(name="deploy_order")
async def changed_arguments(tag: str) -> dict[str, Any]:
    steps = [await reserve("pen"), await charge(12), await ship(tag)]
    return {"steps": steps, "payloads": await _collect(tag)}


@af.workflow(name="deploy_order")
async def renamed_module(tag: str) -> dict[str, Any]:
    steps = [await reserve("book"), await charge(12), await ship_moved(tag)]
    return {"steps": steps, "payloads": await _collect(tag)}


@af.workflow(name="deploy_order")
async def added_hook(tag: str) -> dict[str, Any]:
    steps = [await reserve("book"), await charge(12), await ship(tag)]
    af.create_hook(token=f"deploy-audit:{tag}")
    return {"steps": steps, "payloads": await _collect(tag)}


#: Each change, and the durable call (its index in the history) where it parts from the history.
CHANGES = [
    (added_step, 1),
    (removed_step, 1),
    (reordered_calls, 0),
    (changed_arguments, 0),
    (renamed_module, 2),
    (added_hook, 3),
]
CHANGE_IDS = ["added_step", "removed_step", "reordered_calls", "changed_arguments",
              "renamed_module", "added_hook"]  # fmt: skip


async def wait_parked(rt: Runtime, run_id: str) -> af.Parking:
    """Wait until this runtime has rebuilt the run and parked it; why it is parked."""

    def parked() -> bool:
        run = rt.state.runs.get(run_id)
        return run is not None and run.actor is not None and run.actor.parked

    await wait_until(parked)
    parking = await rt.get_run(run_id).parked()
    assert parking is not None
    return parking


def parked_gauge(rt: Runtime) -> float | None:
    """``actorflow_parked_runs`` as ``GET /metrics`` would show it now."""
    return rt.metrics.registry.get_sample_value("actorflow_parked_runs")


def ids_delivered(directory: Path, run_id: str) -> list[str]:
    return [
        e.data["payload"]["id"]
        for e in read_events(directory)
        if e.run_id == run_id and e.type == "hook_received"
    ]


def types_of(directory: Path, run_id: str) -> Counter[str]:
    return Counter(e.type for e in read_events(directory) if e.run_id == run_id)


@pytest.mark.parametrize(("changed", "position"), CHANGES, ids=CHANGE_IDS)
async def test_every_kind_of_change_parks_the_run_until_the_original_code_returns(
    tmp_path: Path, changed: Any, position: int
) -> None:
    async with af.Runtime(tmp_path, workflows=[original]) as rt:
        run = await rt.start(original, "t")
        await wait_for_hook(rt, "deploy:t")
        await rt.resume_hook("deploy:t", {"id": "p1"})
        await rt.wait_idle()

    async with af.Runtime(tmp_path, workflows=[changed]) as rt:  # the deploy
        parking = await wait_parked(rt, run.run_id)
        assert parking.reason == "divergence" and parking.position == position
        assert parking.recorded and parking.attempted and parking.recorded != parking.attempted
        assert f"#{position}" in parking.message
        handle = rt.get_run(run.run_id)
        assert await handle.status() == "running"  # not failed: the SPEC's status, unchanged
        # The hook is still live: deliveries are accepted and wait for the run.
        await rt.resume_hook("deploy:t", {"id": "p2"})
        first = await rt.resume_hook("deploy:t", {"id": "p3"}, idempotency_key="k3")
        again = await rt.resume_hook("deploy:t", {"id": "p3"}, idempotency_key="k3")
        assert again == first  # a retry with its key is recognised, nothing appended
        assert (await rt.get_hook_by_token("deploy:t")).run_id == run.run_id
        # A retry with the same code parks it again, and records nothing new.
        report = await rt.retry_parked()
        assert report.parked == [run.run_id] and report.resumed == []

    async with af.Runtime(tmp_path, workflows=[changed]) as rt:  # restarted, still changed
        await wait_parked(rt, run.run_id)
        await rt.wait_idle()

    kinds = types_of(tmp_path / "log", run.run_id)
    assert kinds["run_parked"] == 1  # recorded once, for three attempts
    assert kinds["run_failed"] == 0 and kinds["run_unparked"] == 0

    async with af.Runtime(tmp_path, workflows=[original]) as rt:  # rolled back
        with anyio.fail_after(10):
            result = await rt.get_run(run.run_id).result()
        assert await rt.get_run(run.run_id).parked() is None
    assert result == {
        "steps": ["reserved book", 12, "shipped t"],
        "payloads": [{"id": "p1"}, {"id": "p2"}, {"id": "p3"}],
    }
    assert ids_delivered(tmp_path / "log", run.run_id) == ["p1", "p2", "p3"]  # each once
    kinds = types_of(tmp_path / "log", run.run_id)
    assert kinds["run_unparked"] == 1 and kinds["run_completed"] == 1
    assert kinds["step_started"] == 3  # no step ran twice


async def test_fail_keeps_todays_behaviour(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[original]) as rt:
        run = await rt.start(original, "f")
        await wait_for_hook(rt, "deploy:f")
    async with af.Runtime(tmp_path, workflows=[added_step], on_divergence="fail") as rt:
        with pytest.raises(af.WorkflowRunFailedError) as info, anyio.fail_after(10):
            await rt.get_run(run.run_id).result()
        with pytest.raises(af.HookNotFoundError):
            await rt.resume_hook("deploy:f", {"id": "late"})
    assert isinstance(info.value.cause, af.ReplayDivergenceError)
    assert types_of(tmp_path / "log", run.run_id)["run_parked"] == 0


async def test_on_divergence_is_checked(tmp_path: Path) -> None:
    with pytest.raises(af.WorkflowDefinitionError, match="on_divergence"):
        af.Runtime(tmp_path, on_divergence="ignore")


async def test_a_parked_run_can_be_cancelled_and_gives_its_token_back(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[original]) as rt:
        run = await rt.start(original, "c")
        await wait_for_hook(rt, "deploy:c")
    async with af.Runtime(tmp_path, workflows=[added_step]) as rt:
        await wait_parked(rt, run.run_id)
        await rt.get_run(run.run_id).cancel("bad deploy")
        assert await rt.get_run(run.run_id).status() == "cancelled"
        assert await rt.get_run(run.run_id).parked() is None
        with pytest.raises(af.HookNotFoundError):
            await rt.resume_hook("deploy:c", {"id": "late"})
        assert (await rt.retry_parked()).parked == []


# -- what a parked run keeps ---------------------------------------------------------------------


@af.workflow(name="deploy_nap")
async def napping(tag: str) -> list[Any]:
    await reserve("book")
    hook = af.create_hook(token=f"nap:{tag}")
    index, _ = await af.first(hook, af.sleep("1h"))
    return [index, af.now().timestamp()]


@af.workflow(name="deploy_nap")
async def napping_changed(tag: str) -> list[Any]:
    await reserve("pen")
    hook = af.create_hook(token=f"nap:{tag}")
    index, _ = await af.first(hook, af.sleep("1h"))
    return [index, af.now().timestamp()]


async def test_a_parked_run_keeps_its_timers_and_is_bounded_by_its_mailbox(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[napping]) as rt:
        run = await rt.start(napping, "m")
        await wait_for_hook(rt, "nap:m")
        await wait_until(lambda: len(rt.state.timers) == 1)
        await rt.wait_idle()
    async with af.Runtime(tmp_path, workflows=[napping_changed], mailbox_size=2) as rt:
        await wait_parked(rt, run.run_id)
        assert [t.run_id for t in rt.state.timers.values()] == [run.run_id]
        await rt.resume_hook("nap:m", {"id": "a"})
        await rt.resume_hook("nap:m", {"id": "b"})
        with pytest.raises(af.OverloadedError):
            await rt.resume_hook("nap:m", {"id": "c"})  # the bound: nothing committed
        await rt.wait_idle()
    assert ids_delivered(tmp_path / "log", run.run_id) == ["a", "b"]
    async with af.Runtime(tmp_path, workflows=[napping]) as rt:
        with anyio.fail_after(10):
            index, _ = await rt.get_run(run.run_id).result()
    assert index == 0  # the first payload won the race; the timer was still there to lose


# -- retry on demand -----------------------------------------------------------------------------

#: What the code does now: flipped by the test, as a hot fix would change it.
CODE = {"item": "pen"}


@af.workflow(name="deploy_hotfix")
async def hotfixed(tag: str) -> list[Any]:
    reserved = await reserve(CODE["item"])
    return [reserved, await af.create_hook(token=f"fix:{tag}")]


async def test_retry_parked_resumes_runs_the_code_fits_again(tmp_path: Path) -> None:
    CODE["item"] = "book"
    async with af.Runtime(tmp_path, workflows=[hotfixed]) as rt:
        run = await rt.start(hotfixed, "h")
        await wait_for_hook(rt, "fix:h")
    CODE["item"] = "pen"  # a bad deploy
    try:
        async with af.Runtime(tmp_path, workflows=[hotfixed], passivate_after=0.0) as rt:
            await wait_parked(rt, run.run_id)
            await rt.resume_hook("fix:h", {"id": "x"})
            assert (await rt.retry_parked()).parked == [run.run_id]
            assert parked_gauge(rt) == 1
            CODE["item"] = "book"  # fixed in place
            report = await rt.retry_parked()
            assert report.resumed == [run.run_id] and report.parked == []
            assert parked_gauge(rt) == 0
            with anyio.fail_after(10):
                assert await rt.get_run(run.run_id).result() == ["reserved book", {"id": "x"}]
            assert (await rt.retry_parked()).resumed == []  # nothing parked is left
    finally:
        CODE["item"] = "pen"
    kinds = types_of(tmp_path / "log", run.run_id)
    assert kinds["run_parked"] == 1 and kinds["run_unparked"] == 1


async def test_a_missing_workflow_parks_and_a_registration_and_retry_resume_it(
    tmp_path: Path,
) -> None:
    async with af.Runtime(tmp_path, workflows=[hotfixed]) as rt:
        CODE["item"] = "book"
        run = await rt.start(hotfixed, "w")
        await wait_for_hook(rt, "fix:w")
    try:
        async with af.Runtime(tmp_path) as rt:  # the workflow is not deployed
            parking = await wait_parked(rt, run.run_id)
            assert parking.reason == "missing_workflow" and "deploy_hotfix" in parking.message
            await rt.resume_hook("fix:w", {"id": "y"})
            rt.register(hotfixed)
            assert (await rt.retry_parked()).resumed == [run.run_id]
            with anyio.fail_after(10):
                assert await rt.get_run(run.run_id).result() == ["reserved book", {"id": "y"}]
    finally:
        CODE["item"] = "pen"


# -- patches across restarts and passivation -----------------------------------------------------


@af.step
async def wrap_gift(tag: str) -> str:
    return f"wrapped {tag}"


@af.workflow(name="deploy_gift")
async def gift_v1(tag: str) -> list[Any]:
    reserved = await reserve("book")
    hook = af.create_hook(token=f"gift:{tag}")
    return [reserved, None, await hook, await hook, None]


@af.workflow(name="deploy_gift")
async def gift_v2(tag: str) -> list[Any]:
    reserved = await reserve("book")
    wrapped = await wrap_gift(tag) if af.patched("gift-wrap") else None
    hook = af.create_hook(token=f"gift:{tag}")
    first = await hook
    second = await hook
    return [reserved, wrapped, first, second, af.patched("gift-wrap")]


@af.workflow(name="deploy_gift")
async def gift_v3(tag: str) -> list[Any]:
    reserved = await reserve("book")
    af.deprecate_patch("gift-wrap")
    wrapped = await wrap_gift(tag)
    hook = af.create_hook(token=f"gift:{tag}")
    first = await hook
    second = await hook
    return [reserved, wrapped, first, second, True]


async def test_patched_old_runs_take_the_old_branch_new_runs_the_new(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[gift_v1]) as rt:
        old = await rt.start(gift_v1, "old")
        await wait_for_hook(rt, "gift:old")
    # max_resident=1: each delivery passivates the other run, which replays on its next one.
    async with af.Runtime(tmp_path, workflows=[gift_v2], max_resident=1) as rt:
        new = await rt.start(gift_v2, "new")
        await wait_for_hook(rt, "gift:new")
        await wait_for_hook(rt, "gift:old")
        await rt.resume_hook("gift:old", 1)
        await rt.resume_hook("gift:new", 1)
        await rt.wait_idle()
        assert await rt.get_run(old.run_id).parked() is None
    async with af.Runtime(tmp_path, workflows=[gift_v2], max_resident=1) as rt:  # restarted
        await rt.resume_hook("gift:old", 2)
        await rt.resume_hook("gift:new", 2)
        with anyio.fail_after(10):
            assert await rt.get_run(old.run_id).result() == ["reserved book", None, 1, 2, False]
            assert await rt.get_run(new.run_id).result() == [
                "reserved book", "wrapped new", 1, 2, True,
            ]  # fmt: skip
    markers = [e for e in read_events(tmp_path / "log") if e.type == "patch_marked"]
    assert [(e.run_id, e.data["patch"]) for e in markers] == [(new.run_id, "gift-wrap")]


@af.workflow(name="deploy_gift")
async def gift_unpatched(tag: str) -> list[Any]:
    reserved = await reserve("book")
    wrapped = await wrap_gift(tag)  # the new step, deployed without a patch
    hook = af.create_hook(token=f"gift:{tag}")
    return [reserved, wrapped, await hook, await hook, True]


async def test_a_run_parked_by_a_change_goes_on_once_the_change_is_a_patch(tmp_path: Path) -> None:
    """The README's worked example: a bad deploy parks, the patched deploy finishes the run."""
    async with af.Runtime(tmp_path, workflows=[gift_v1]) as rt:
        run = await rt.start(gift_v1, "w")
        await wait_for_hook(rt, "gift:w")
    async with af.Runtime(tmp_path, workflows=[gift_unpatched]) as rt:
        parking = await wait_parked(rt, run.run_id)
        assert parking.position == 1 and "gift:w" in (parking.recorded or "")
        assert "wrap_gift" in (parking.attempted or "")
        await rt.resume_hook("gift:w", {"id": "a1"})
        await rt.resume_hook("gift:w", {"id": "a2"})
        await rt.wait_idle()
    async with af.Runtime(tmp_path, workflows=[gift_v2]) as rt:
        with anyio.fail_after(10):
            result = await rt.get_run(run.run_id).result()
    assert result == ["reserved book", None, {"id": "a1"}, {"id": "a2"}, False]
    assert ids_delivered(tmp_path / "log", run.run_id) == ["a1", "a2"]
    assert types_of(tmp_path / "log", run.run_id)["patch_marked"] == 0


async def test_deprecate_patch_replays_runs_that_took_the_new_branch(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[gift_v2]) as rt:
        marked = await rt.start(gift_v2, "m")
        await wait_for_hook(rt, "gift:m")
        await rt.resume_hook("gift:m", 1)
        await rt.wait_idle()
    async with af.Runtime(tmp_path, workflows=[gift_v3]) as rt:
        fresh = await rt.start(gift_v3, "f")
        await wait_for_hook(rt, "gift:f")
        await rt.resume_hook("gift:m", 2)
        await rt.resume_hook("gift:f", 1)
        await rt.resume_hook("gift:f", 2)
        with anyio.fail_after(10):
            assert await rt.get_run(marked.run_id).result() == [
                "reserved book", "wrapped m", 1, 2, True,
            ]  # fmt: skip
            assert await rt.get_run(fresh.run_id).result() == [
                "reserved book", "wrapped f", 1, 2, True,
            ]  # fmt: skip
    assert types_of(tmp_path / "log", fresh.run_id)["patch_marked"] == 0


async def test_patched_outside_a_workflow_and_with_a_bad_id(tmp_path: Path) -> None:
    with pytest.raises(af.WorkflowDefinitionError, match="inside a workflow"):
        af.patched("x")

    @af.workflow(name="deploy_bad_patch")
    async def bad() -> bool:
        return af.patched("")

    async with af.Runtime(tmp_path, workflows=[bad]) as rt:
        run = await rt.start(bad)
        with pytest.raises(af.WorkflowRunFailedError) as info, anyio.fail_after(10):
            await run.result()
    assert isinstance(info.value.cause, af.WorkflowDefinitionError)


# -- versions ------------------------------------------------------------------------------------


@af.workflow(name="deploy_versioned")
async def versioned(tag: str) -> Any:
    return await af.create_hook(token=f"ver:{tag}")


async def test_a_versioned_runtime_runs_only_its_own_versions_runs(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[versioned], version="v1") as rt:
        old = await rt.start(versioned, "old")
        await wait_for_hook(rt, "ver:old")
    async with af.Runtime(tmp_path, workflows=[versioned], version="v2") as rt:
        new = await rt.start(versioned, "new")
        await wait_for_hook(rt, "ver:new")
        assert (await rt.front.run_state(new.run_id))[0].version == "v2"
        assert (await rt.front.run_state(old.run_id))[0].version == "v1"
        await rt.resume_hook("ver:new", {"id": "n1"})
        with anyio.fail_after(10):
            assert await rt.get_run(new.run_id).result() == {"id": "n1"}
        # The v1 run is read from here, not run here: no event of it was written.
        assert await rt.get_run(old.run_id).status() == "running"
        assert await rt.get_run(old.run_id).parked() is None  # waiting, not parked
        assert (await rt.retry_parked()).resumed == []
        await rt.wait_idle()
    created = [e for e in read_events(tmp_path / "log") if e.type == "run_created"]
    assert [e.data.get("version") for e in created] == ["v1", "v2"]
    assert types_of(tmp_path / "log", old.run_id) == Counter(
        {"run_created": 1, "run_started": 1, "hook_created": 1}
    )
    async with af.Runtime(tmp_path, workflows=[versioned], version="v1") as rt:
        await rt.resume_hook("ver:old", {"id": "o1"})
        with anyio.fail_after(10):
            assert await rt.get_run(old.run_id).result() == {"id": "o1"}
    assert ids_delivered(tmp_path / "log", old.run_id) == ["o1"]


async def test_another_versions_run_takes_deliveries_and_waits_in_one_process(
    tmp_path: Path,
) -> None:
    async with af.Runtime(tmp_path, workflows=[versioned], version="v1") as rt:
        old = await rt.start(versioned, "wait")
        await wait_for_hook(rt, "ver:wait")
    async with af.Runtime(tmp_path, workflows=[versioned], version="v2") as rt:
        # One process holds every run of its log: a delivery is accepted and waits for v1.
        await rt.resume_hook("ver:wait", {"id": "w1"})
        await rt.wait_idle()
        assert await rt.get_run(old.run_id).status() == "running"
    async with af.Runtime(tmp_path, workflows=[versioned], version="v1") as rt:
        with anyio.fail_after(10):
            assert await rt.get_run(old.run_id).result() == {"id": "w1"}
    assert ids_delivered(tmp_path / "log", old.run_id) == ["w1"]


async def test_an_unversioned_runtime_runs_any_run(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[versioned], version="v1") as rt:
        run = await rt.start(versioned, "any")
        await wait_for_hook(rt, "ver:any")
    async with af.Runtime(tmp_path, workflows=[versioned]) as rt:
        await rt.resume_hook("ver:any", 7)
        with anyio.fail_after(10):
            assert await rt.get_run(run.run_id).result() == 7


# -- stable names --------------------------------------------------------------------------------


def test_a_step_whose_default_name_depends_on_main_warns_at_decoration() -> None:
    async def settle(order: str) -> str:
        return order

    async def refund(order: str) -> str:
        return order

    settle.__module__ = refund.__module__ = "__main__"  # defined in a script run directly
    settle.__qualname__, refund.__qualname__ = "settle", "refund"
    with pytest.warns(UnstableNameWarning, match=r"af\.step\(name=") as caught:
        decorated = af.step(settle)
    assert decorated.name == "__main__.settle"
    assert caught[0].filename == __file__  # points at the decoration, not at actorflow
    with pytest.warns(UnstableNameWarning) as caught:
        af.step(max_retries=1)(refund)
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert af.step(name="billing.refund")(refund).name == "billing.refund"  # chosen: quiet
        assert af.step(reserve.fn).name == reserve.name  # a real module: quiet
        assert af.workflow(settle).name == "settle"  # a workflow's default is its __name__
