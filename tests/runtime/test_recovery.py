"""Recovery: stop after every append, restart, and finish; divergence; torn tails; supervision.

Every test here uses real files and real fsync. "Crash at every append" is made two ways:

- *prefix*: the log of an uninterrupted run is cut after its k-th record into a fresh directory
  (what is on disk when a process dies after its k-th durable append), for every k;
- *live*: a store that lets k records through, then fails the rest of the batch and every later
  write, as a process stopping mid-batch would; the runtime is then closed and a new one opened
  on the same directory, for every k until a run finishes without reaching the fault.

Either way the driver then resumes every payload again with its idempotency key (it cannot know
which acknowledgements were lost), and the run must end with the uninterrupted result, each
payload delivered exactly once.
"""

from __future__ import annotations

import base64
import gc
import os
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from tests.conftest import (
    LaterRuntime,
    copy_prefix,
    read_events,
    read_records,
    wait_for_hook,
    wait_until,
)

import actorflow as af
from actorflow.errors import LogWriteError
from actorflow.runtime.actor import Actor
from actorflow.runtime.log.file_log import FileLog
from actorflow.runtime.log.store import Durability, EventStore, Position, ScanReport

pytestmark = pytest.mark.anyio

# -- the workflow every crash test drives -------------------------------------------------------

#: (token prefix, idempotency key, payload), delivered in this order.
PAYLOADS = [
    ("journey", "k1", {"v": 10}),
    ("journey-race", "k2", {"v": 20}),
    ("journey-timeout", "k3", {"v": 30}),
]


@af.step
async def double(x: int) -> int:
    return 2 * x


@af.workflow
async def journey(tag: str) -> dict[str, Any]:
    """Steps, hooks, a sleep that fires, a race and a timeout that lose to their hooks.

    The race's and the timeout's hooks are created just before they are awaited, so their
    payloads can only arrive once the timers exist (and must then be cancelled).
    """
    hook = af.create_hook(token=f"journey:{tag}")
    a = await double(1)
    p1 = await hook
    await af.sleep(0)  # due at once: wait_created then wait_completed
    race = af.create_hook(token=f"journey-race:{tag}")
    index, p2 = await af.first(race, af.sleep("7d"))  # the hook wins: wait_cancelled
    b = await double(a + p1["v"] + p2["v"])
    p3 = await af.create_hook(token=f"journey-timeout:{tag}").wait(timeout="1d")
    c, d = await af.gather(double(b), double(p3["v"]))
    return {"a": a, "b": b, "c": c, "d": d, "index": index, "payloads": [p1, p2, p3]}


EXPECTED = {
    "a": 2,
    "b": 64,
    "c": 128,
    "d": 60,
    "index": 0,
    "payloads": [{"v": 10}, {"v": 20}, {"v": 30}],
}


async def deliver_all(rt: af.Runtime, run_id: str, tag: str) -> None:
    """Resume every payload until it is acknowledged or the run has ended."""
    for prefix, key, payload in PAYLOADS:
        while rt.state.runs[run_id].status not in ("completed", "failed", "cancelled"):
            try:
                await rt.resume_hook(f"{prefix}:{tag}", payload, idempotency_key=key)
                break
            except af.HookNotFoundError:
                await anyio.lowlevel.checkpoint()


KEY = base64.b64encode(bytes(range(32))).decode()


def check_exactly_once(directory: Path, run_id: str) -> None:
    events = [e for e in read_events(directory) if e.run_id == run_id]
    received = [e.data.get("idempotency_key") for e in events if e.type == "hook_received"]
    assert sorted(received) == ["k1", "k2", "k3"], received
    assert [e.type for e in events].count("run_completed") == 1
    assert events[-1].type == "run_completed"


async def test_uninterrupted_journey(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[journey]) as rt:
        run = await rt.start(journey, "ref")
        await deliver_all(rt, run.run_id, "ref")
        assert await run.result() == EXPECTED
    types = [e.type for e in read_events(tmp_path / "log")]
    for kind in ("step_started", "wait_completed", "hook_received"):
        assert kind in types
    assert types.count("wait_cancelled") == 2
    check_exactly_once(tmp_path / "log", run.run_id)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_crash_after_every_append_prefix(tmp_path: Path, encrypted: bool) -> None:
    options: dict[str, Any] = {"encryption_key": KEY} if encrypted else {}
    async with af.Runtime(tmp_path / "ref", workflows=[journey], **options) as rt:
        run = await rt.start(journey, "p")
        await deliver_all(rt, run.run_id, "p")
        assert await run.result() == EXPECTED
    records = read_records(tmp_path / "ref" / "log")
    assert len(records) > 20
    assert (b'"v":20' in b"".join(records)) is not encrypted
    for k in range(1, len(records) + 1):
        directory = tmp_path / f"k{k}"
        copy_prefix(records, k, directory / "log")
        async with af.Runtime(directory, workflows=[journey], **options) as rt:
            await deliver_all(rt, run.run_id, "p")
            with anyio.fail_after(10):
                assert await rt.get_run(run.run_id).result() == EXPECTED, f"k={k}"
        check_exactly_once(directory / "log", run.run_id)


class CrashingStore:
    """Lets ``limit`` records reach the file log, then fails: the process "stopped" there.

    A batch that crosses the limit is cut: its first records are written (and synced at close),
    the rest never are, and the runtime's writer sees the append fail.
    """

    def __init__(self, inner: EventStore, limit: int) -> None:
        self.inner = inner
        self.durability: Durability = inner.durability
        self.limit = limit
        self.written = 0
        self.crashed = False

    def scan(self) -> Iterator[tuple[Position, bytes]]:
        for item in self.inner.scan():
            self.written += 1
            yield item

    @property
    def last_scan(self) -> ScanReport | None:
        return self.inner.last_scan

    def append(self, records: Sequence[bytes]) -> list[Position]:
        if self.crashed:
            raise LogWriteError("stopped")
        room = self.limit - self.written
        if len(records) > room:
            self.crashed = True
            if room > 0:
                self.inner.append(records[:room])
                self.inner.sync()
                self.written += room
            raise LogWriteError(f"the process stopped after record {self.limit}")
        self.written += len(records)
        return self.inner.append(records)

    def sync(self) -> None:
        self.inner.sync()

    def read(self, positions: Sequence[Position]) -> list[bytes]:
        return self.inner.read(positions)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("passivate_after", [300.0, 0.0], ids=["resident", "passivating"])
async def test_crash_after_every_append_live(tmp_path: Path, passivate_after: float) -> None:
    """With ``passivate_after=0`` every message also goes through a rebuild from the log."""
    k = 0
    while True:
        k += 1
        assert k < 200, "the run never finished"
        directory = tmp_path / f"k{k}"
        store = CrashingStore(FileLog(directory / "log"), limit=k)
        run_id = None
        async with af.Runtime(
            directory, workflows=[journey], store=store, passivate_after=passivate_after
        ) as rt:
            try:
                run = await rt.start(journey, "live")
                run_id = run.run_id
                for prefix, key, payload in PAYLOADS:
                    while not store.crashed:
                        try:
                            await rt.resume_hook(f"{prefix}:live", payload, idempotency_key=key)
                            break
                        except af.HookNotFoundError:
                            await anyio.lowlevel.checkpoint()
                state = rt.state.runs[run.run_id]
                await wait_until(
                    lambda s=store, r=state: s.crashed or r.status == "completed"  # type: ignore[misc]
                )
                if not store.crashed:
                    await rt.wait_idle()
            except LogWriteError:
                assert store.crashed
        if run_id is None:  # not even run_created reached the disk: nothing to recover
            assert read_records(directory / "log") == []
            continue
        async with af.Runtime(
            directory, workflows=[journey], passivate_after=passivate_after
        ) as rt:
            await deliver_all(rt, run_id, "live")
            with anyio.fail_after(10):
                assert await rt.get_run(run_id).result() == EXPECTED, f"k={k}"
        check_exactly_once(directory / "log", run_id)
        if not store.crashed:
            break  # k passed the length of a whole run: every append has been a crash point
    assert k > 20


# -- replay divergence --------------------------------------------------------------------------


@af.step
async def step_a(x: int) -> int:
    return x


@af.step
async def step_b(x: int) -> int:
    return x


@af.workflow(name="evolving")
async def evolving_v1(tag: str) -> Any:
    await step_a(1)
    await step_a(2)
    return await af.create_hook(token=f"evolve:{tag}")


@af.workflow(name="evolving")
async def evolving_other_step(tag: str) -> Any:
    await step_b(1)
    await step_a(2)
    return await af.create_hook(token=f"evolve:{tag}")


@af.workflow(name="evolving")
async def evolving_reordered(tag: str) -> Any:
    await step_a(2)  # same name, arguments swapped: only the args digest tells them apart
    await step_a(1)
    return await af.create_hook(token=f"evolve:{tag}")


@af.workflow(name="evolving")
async def evolving_returns_early(tag: str) -> Any:
    await step_a(1)
    return "early"


@af.workflow(name="evolving")
async def evolving_compatible(tag: str) -> Any:
    await step_a(1)
    await step_a(2)
    payload = await af.create_hook(token=f"evolve:{tag}")
    return ["v2", payload, await step_b(3)]  # new code after the recorded history is fine


@pytest.mark.parametrize(
    "changed", [evolving_other_step, evolving_reordered, evolving_returns_early]
)
async def test_a_changed_workflow_fails_with_replay_divergence_when_asked_to(
    tmp_path: Path, changed: Any
) -> None:
    async with af.Runtime(tmp_path, workflows=[evolving_v1]) as rt:
        run = await rt.start(evolving_v1, "d")
        await wait_for_hook(rt, "evolve:d")
    # Fail-fast, as asked for; the default parks instead (tests/runtime/test_deploys.py).
    async with af.Runtime(tmp_path, workflows=[changed], on_divergence="fail") as rt:
        with pytest.raises(af.WorkflowRunFailedError) as info:
            with anyio.fail_after(10):
                await rt.get_run(run.run_id).result()
        assert await rt.get_run(run.run_id).status() == "failed"
        with pytest.raises(af.HookNotFoundError):  # the failed run's hook is released
            await rt.resume_hook("evolve:d", 1)
    cause = info.value.cause
    assert isinstance(cause, af.ReplayDivergenceError)
    assert cause.run_id == run.run_id
    assert "step_a" in cause.expected


async def test_the_args_digest_catches_reordered_calls_of_one_step(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[evolving_v1]) as rt:
        run = await rt.start(evolving_v1, "r")
        await wait_for_hook(rt, "evolve:r")
    async with af.Runtime(tmp_path, workflows=[evolving_reordered], on_divergence="fail") as rt:
        with pytest.raises(af.WorkflowRunFailedError) as info:
            await rt.get_run(run.run_id).result()
    cause = info.value.cause
    assert isinstance(cause, af.ReplayDivergenceError)
    assert cause.position == 0
    assert "step_a" in cause.expected and "step_a" in cause.got
    assert cause.expected != cause.got


async def test_new_code_after_the_recorded_history_does_not_diverge(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[evolving_v1]) as rt:
        run = await rt.start(evolving_v1, "c")
        await wait_for_hook(rt, "evolve:c")
    async with af.Runtime(tmp_path, workflows=[evolving_compatible]) as rt:
        await wait_for_hook(rt, "evolve:c")
        await rt.resume_hook("evolve:c", "ok")
        assert await rt.get_run(run.run_id).result() == ["v2", "ok", 3]


# -- timers and runs across restarts -------------------------------------------------------------


@af.workflow
async def naps(tag: str) -> float:
    start = af.now()
    await af.sleep("1h")
    return (af.now() - start).total_seconds()


async def test_a_sleep_that_came_due_while_down_fires_at_the_next_start(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[naps]) as rt:
        run = await rt.start(naps, "z")
        await wait_until(lambda: len(rt.state.timers) == 1)
        await rt.wait_idle()
    # Two hours later (the wall-clock base of the new process is ahead; no real waiting).
    async with LaterRuntime(tmp_path, workflows=[naps], offset=7200) as rt:
        started = rt.clock()
        with anyio.fail_after(10):
            slept = await rt.get_run(run.run_id).result()
        assert rt.state.timers == {}
    assert slept == pytest.approx(7200, abs=5)  # woke at the start, not an hour after it
    events = read_events(tmp_path / "log")
    created = next(e for e in events if e.type == "wait_created")
    completed = next(e for e in events if e.type == "wait_completed")
    assert completed.created_at >= created.data["resume_at"]
    assert completed.created_at - started < 5


gates: dict[str, anyio.Event] = {}
step_runs: list[tuple[str, str, int]] = []


@af.step
async def slow_io(label: str) -> str:
    meta = af.get_step_metadata()
    step_runs.append((label, meta.step_id, meta.attempt))
    gate = gates.get(label)
    if gate is None:
        await anyio.sleep_forever()  # stands for I/O that the shutdown interrupts
    return f"io {label}"


@af.workflow
async def mixed(kind: str, label: str) -> Any:
    if kind == "hook":
        return await af.create_hook(token=f"mixed:{label}")
    if kind == "step":
        return await slow_io(label)
    await af.sleep(0)
    return "slept"


async def test_unfinished_runs_continue_after_a_restart(tmp_path: Path, anyio_backend: str) -> None:
    label = f"unfinished-{anyio_backend}"
    async with af.Runtime(tmp_path, workflows=[mixed]) as rt:
        on_hook = await rt.start(mixed, "hook", label)
        on_step = await rt.start(mixed, "step", label)
        await wait_for_hook(rt, f"mixed:{label}")
        await wait_until(lambda: any(r[0] == label for r in step_runs))
        assert await on_step.status() == "running"
    gates[label] = anyio.Event()  # the step will return this time
    async with af.Runtime(tmp_path, workflows=[mixed]) as rt:
        sleeper = await rt.start(mixed, "sleep", label)
        await wait_for_hook(rt, f"mixed:{label}")
        await rt.resume_hook(f"mixed:{label}", "resumed after restart")
        with anyio.fail_after(10):
            assert await rt.get_run(on_hook.run_id).result() == "resumed after restart"
            assert await rt.get_run(on_step.run_id).result() == f"io {label}"
            assert await sleeper.result() == "slept"
    # The interrupted step ran again (steps are at least once) under the same step_id.
    mine = [r for r in step_runs if r[0] == label]
    assert len(mine) == 2 and mine[0][1] == mine[1][1]


async def test_a_completed_run_is_read_back_after_a_restart_without_rerunning(
    tmp_path: Path,
) -> None:
    async with af.Runtime(tmp_path, workflows=[journey]) as rt:
        run = await rt.start(journey, "done")
        await deliver_all(rt, run.run_id, "done")
        assert await run.result() == EXPECTED
    size = sum(f.stat().st_size for f in (tmp_path / "log").glob("*.log"))
    async with af.Runtime(tmp_path, workflows=[journey]) as rt:
        assert await rt.get_run(run.run_id).status() == "completed"
        assert await rt.get_run(run.run_id).result() == EXPECTED
        assert rt.supervisor.resident == 0 and rt.supervisor.rebuilt == 0
    assert sum(f.stat().st_size for f in (tmp_path / "log").glob("*.log")) == size


async def test_one_data_directory_takes_one_runtime(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[journey]):
        with pytest.raises(af.StorageError, match="already open"):
            async with af.Runtime(tmp_path, workflows=[journey]):
                pass


async def test_a_torn_tail_is_truncated_reported_and_recovered(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[journey]) as rt:
        run = await rt.start(journey, "torn")
        await deliver_all(rt, run.run_id, "torn")
        assert await run.result() == EXPECTED
    segment = sorted((tmp_path / "log").glob("*.log"))[-1]
    size = segment.stat().st_size
    os.truncate(segment, size - 3)  # a crash in the middle of writing the last record
    async with af.Runtime(tmp_path, workflows=[journey]) as rt:
        assert rt.torn_tail is not None and segment.name in rt.torn_tail
        # The lost record was run_completed: the run is finished again by replay.
        with anyio.fail_after(10):
            assert await rt.get_run(run.run_id).result() == EXPECTED
    check_exactly_once(tmp_path / "log", run.run_id)
    async with af.Runtime(tmp_path, workflows=[journey]) as rt:
        assert rt.torn_tail is None


async def test_corruption_before_the_tail_is_refused(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[journey]) as rt:
        run = await rt.start(journey, "corrupt")
        await deliver_all(rt, run.run_id, "corrupt")
        await run.result()
    segment = sorted((tmp_path / "log").glob("*.log"))[-1]
    data = bytearray(segment.read_bytes())
    data[40] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(af.LogCorruptedError) as info:
        async with af.Runtime(tmp_path, workflows=[journey]):
            pass
    assert segment.name in str(info.value) and info.value.offset > 0


# -- supervision ---------------------------------------------------------------------------------


@af.workflow
async def supervised(tag: str) -> Any:
    hook = af.create_hook(token=f"sup:{tag}")
    return [await hook, await hook]


def inject_crashes(monkeypatch: pytest.MonkeyPatch, run_ids: set[str], times: int) -> list[str]:
    """Make ``Actor.process`` raise ``times`` times for the given runs (a runtime bug)."""
    crashes: list[str] = []
    original = Actor.process

    def process(self: Actor) -> None:
        if self.run.run_id in run_ids and len(crashes) < times:
            crashes.append(self.run.run_id)
            raise RuntimeError(f"injected crash {len(crashes)}")
        original(self)

    monkeypatch.setattr(Actor, "process", process)
    return crashes


async def test_a_crashed_actor_is_rebuilt_within_the_restart_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with af.Runtime(tmp_path, workflows=[supervised], restart_budget=3) as rt:
        run = await rt.start(supervised, "ok")
        await wait_for_hook(rt, "sup:ok")
        crashes = inject_crashes(monkeypatch, {run.run_id}, times=3)
        rebuilt = rt.supervisor.rebuilt
        await rt.resume_hook("sup:ok", "one")
        # Crash, rebuild (replaying "one"), crash again... until the budget's third crash.
        await wait_until(lambda: len(crashes) == 3 and rt.supervisor.rebuilt - rebuilt == 3)
        await rt.resume_hook("sup:ok", "two")
        assert await run.result() == ["one", "two"]
        assert rt.supervisor.crashes == 3


async def test_past_the_restart_budget_the_run_fails_with_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with af.Runtime(tmp_path, workflows=[supervised], restart_budget=3) as rt:
        run = await rt.start(supervised, "bad")
        other = await rt.start(supervised, "bystander")
        await wait_for_hook(rt, "sup:bad")
        await wait_for_hook(rt, "sup:bystander")
        inject_crashes(monkeypatch, {run.run_id}, times=100)
        await rt.resume_hook("sup:bad", "one")
        with pytest.raises(af.WorkflowRunFailedError) as info:
            with anyio.fail_after(10):
                await run.result()
        assert isinstance(info.value.cause, RuntimeError)
        assert "injected crash 4" in str(info.value.cause)
        with pytest.raises(af.HookNotFoundError):
            await rt.resume_hook("sup:bad", "two")
        # One-for-one: the other run is untouched.
        await rt.resume_hook("sup:bystander", 1)
        await rt.resume_hook("sup:bystander", 2)
        assert await other.result() == [1, 2]


#: Orders the current code accepts; a test drops one to play a code change.
ACCEPTED_ORDERS = {"o-1"}


@dataclass(frozen=True)
class Order:
    order_id: str

    def __post_init__(self) -> None:
        if self.order_id not in ACCEPTED_ORDERS:
            raise ValueError(f"unknown order {self.order_id}")


@af.workflow
async def takes_order(order: Order) -> Any:
    return await af.create_hook(token=f"order:{order.order_id}")


async def test_a_run_that_cannot_be_rebuilt_exhausts_the_budget_and_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real fault: the new code rejects the run's recorded input whenever it is rebuilt."""
    async with af.Runtime(tmp_path, workflows=[takes_order]) as rt:
        run = await rt.start(takes_order, Order("o-1"))
        await wait_for_hook(rt, "order:o-1")
    monkeypatch.setattr(sys.modules[__name__], "ACCEPTED_ORDERS", set())
    async with af.Runtime(tmp_path, workflows=[takes_order], restart_budget=3) as rt:
        with pytest.raises(af.WorkflowRunFailedError) as info:
            with anyio.fail_after(10):
                await rt.get_run(run.run_id).result()
        assert rt.supervisor.crashes == 4
    assert isinstance(info.value.cause, af.SerializationError)
    assert "unknown order o-1" in str(info.value.cause)


# -- shutdown with runs suspended -----------------------------------------------------------------


@af.workflow
async def held_in_with(token: str) -> Any:
    with af.create_hook(token=token) as hook:
        return await hook


held_in_with_code = held_in_with.fn.__code__


async def test_a_run_suspended_in_a_with_block_keeps_its_hook_across_a_shutdown(
    tmp_path: Path,
) -> None:
    """Closing the runtime closes its suspended workflows, without logging anything for them.

    Left open, a workflow's coroutine outlives its runtime, and its ``with`` block runs
    ``dispose`` whenever the collector or the interpreter's exit closes it, with no event loop
    (an exception in ``__del__``); a dispose logged at shutdown would instead take the hook
    away from the next process.
    """

    async def first_process() -> str:
        async with af.Runtime(tmp_path, workflows=[held_in_with]) as rt:
            run = await rt.start(held_in_with, "held")
            await wait_for_hook(rt, "held")
            return run.run_id

    run_id = await first_process()
    gc.collect()
    suspended = [
        o
        for o in gc.get_objects()
        if isinstance(o, types.CoroutineType) and o.cr_code is held_in_with_code
    ]
    assert [c for c in suspended if c.cr_frame is not None] == []
    kinds = [e.type for e in read_events(tmp_path / "log") if e.run_id == run_id]
    assert kinds == ["run_created", "run_started", "hook_created"]
    async with af.Runtime(tmp_path, workflows=[held_in_with]) as rt:
        await rt.resume_hook("held", {"id": "p-1"})
        with anyio.fail_after(10):
            assert await rt.get_run(run_id).result() == {"id": "p-1"}
    kinds = [e.type for e in read_events(tmp_path / "log") if e.run_id == run_id]
    received = [e.data["payload"] for e in read_events(tmp_path / "log")
                if e.run_id == run_id and e.type == "hook_received"]  # fmt: skip
    assert received == [{"id": "p-1"}] and kinds[-1] == "run_completed"
