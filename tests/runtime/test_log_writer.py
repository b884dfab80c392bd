"""How the group-commit writer waits for a batch: blocked for a moment, or awaiting.

A batch of one or two events on a local store goes to the writer's own thread while the event
loop waits for it blocked, for a bounded time (the round trip through ``anyio.to_thread`` costs
about as much again as a fast fsync); a larger batch, a store that is not local, or a disk whose
fsyncs have become slow is awaited, so the loop keeps running while the disk works. Real files
and real fsyncs throughout; the ``fsync`` seam only records the calling thread's name and, where
the test needs a slow or hung disk, sleeps or waits first.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from tests.conftest import HangingFsync, read_events, wait_until

import actorflow as af
from actorflow.errors import LogWriteError
from actorflow.runtime.core.events import Event
from actorflow.runtime.log.file_log import FileLog
from actorflow.runtime.log.store import Position
from actorflow.runtime.log.writer import LogWriter

pytestmark = pytest.mark.anyio


class Disk:
    """Real fsyncs that note which thread made each one, optionally after a delay."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.delay = 0.0

    def fsync(self, fd: int) -> None:
        self.threads.append(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        os.fsync(fd)


def event(n: int) -> Event:
    return Event(f"evnt_{n}", "run_1", "hook_received", None, 0.0, {"n": n})


def encode(event: Event, key: Any, encoded: Any) -> bytes:
    return event.event_id.encode()


def open_log(path: Path, disk: Disk) -> FileLog:
    log = FileLog(path, fsync=disk.fsync)
    for _ in log.scan():
        pass
    return log


async def write_batches(writer: LogWriter, sizes: Sequence[int]) -> list[Event]:
    """Submit batches of these sizes one after another, each waited for before the next."""
    written: list[Event] = []
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        for size in sizes:
            batch = [event(len(written) + i) for i in range(size)]
            tickets = [writer.submit(e) for e in batch]
            for ticket in tickets:
                await ticket.wait()
            written += batch
        writer.close()
    return written


def read_back(path: Path) -> list[bytes]:
    log = FileLog(path)
    try:
        return [record for _, record in log.scan()]
    finally:
        log.close()


def waited_blocked(threads: list[str]) -> list[bool]:
    return [name.startswith("actorflow-log-writer") for name in threads]


async def test_small_batches_are_waited_for_blocked_large_ones_awaited(
    tmp_path: Path,
) -> None:
    disk = Disk()
    log = open_log(tmp_path / "log", disk)
    durable: list[str] = []
    # No limit on the sync time here (a loaded machine's fsync can pass 1 ms): size decides.
    writer = LogWriter(
        log,
        encode,
        lambda events: durable.extend(e.event_id for e in events),
        inline_sync_limit=60.0,
    )
    disk.threads.clear()  # the fsyncs of opening the directory
    written = await write_batches(writer, [1, 2, 3, 1, 50])
    log.close()
    assert waited_blocked(disk.threads) == [True, True, False, True, False]
    assert writer.inline_batches == 3
    # The writer's own thread ended with its run.
    assert not any(waited_blocked([t.name for t in threading.enumerate()]))
    ids = [e.event_id for e in written]
    assert durable == ids
    assert read_back(tmp_path / "log") == [i.encode() for i in ids]
    assert all(e.position >= 0 for e in written)


async def test_slow_fsyncs_send_even_small_batches_to_a_worker_until_they_are_fast_again(
    tmp_path: Path,
) -> None:
    disk = Disk()
    log = open_log(tmp_path / "log", disk)
    writer = LogWriter(log, encode, lambda events: None, inline_sync_limit=0.05)
    disk.threads.clear()
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        disk.delay = 0.5  # one slow fsync lifts the estimate over the limit at once ...
        await writer.submit(event(0)).wait()
        disk.delay = 0.0
        # ... and only a run of fast ones brings it down: 500 ms * (7/8)^k <= 50 ms at k = 18.
        for n in range(1, 31):
            await writer.submit(event(n)).wait()
        writer.close()
    log.close()
    on_loop = waited_blocked(disk.threads)
    assert on_loop[0] is True  # the first was made before anything was known of the disk
    assert on_loop[1] is False
    first_back = on_loop.index(True, 1)
    assert 17 <= first_back <= 21, on_loop
    assert all(on_loop[first_back:])


class RemoteStore:
    """A store that does not say it writes locally (as PostgreSQL's): never written on the loop."""

    durability = "fsync"

    def __init__(self, inner: FileLog) -> None:
        self._inner = inner
        self.threads: list[str] = []

    def append(self, records: Sequence[bytes]) -> list[Position]:
        self.threads.append(threading.current_thread().name)
        return self._inner.append(records)

    def sync(self) -> None:
        self._inner.sync()


async def test_a_store_that_is_not_local_is_always_written_in_a_worker(tmp_path: Path) -> None:
    store = RemoteStore(open_log(tmp_path / "log", Disk()))
    writer = LogWriter(store, encode, lambda events: None)  # type: ignore[arg-type]
    await write_batches(writer, [1, 1, 2])
    store._inner.close()
    assert len(store.threads) == 3
    assert not any(waited_blocked(store.threads))
    assert threading.current_thread().name not in store.threads


async def test_a_failed_fsync_waited_for_blocked_fails_the_batch_and_every_later_submit(
    tmp_path: Path,
) -> None:
    failing = {"on": False}

    def fsync(fd: int) -> None:
        if failing["on"]:
            raise OSError(5, "Input/output error")
        os.fsync(fd)

    log = FileLog(tmp_path / "log", fsync=fsync)
    for _ in log.scan():
        pass
    writer = LogWriter(log, encode, lambda events: None)

    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        await writer.submit(event(1)).wait()
        failing["on"] = True
        with pytest.raises(LogWriteError, match="Input/output error"):
            await writer.submit(event(2)).wait()
        with pytest.raises(LogWriteError, match="failed earlier"):
            writer.submit(event(3))
    log.close()
    assert writer.inline_batches == 2  # the failure came back through the blocked wait
    assert read_back(tmp_path / "log")[:1] == [b"evnt_1"]


async def test_a_hung_fsync_stalls_the_loop_for_the_limit_then_is_awaited(tmp_path: Path) -> None:
    fsync = HangingFsync()
    log = FileLog(tmp_path / "log", fsync=fsync)
    for _ in log.scan():
        pass
    fsync.hang = True
    durable: list[str] = []
    writer = LogWriter(log, encode, lambda events: durable.extend(e.event_id for e in events))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.001)
            ticks += 1

    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        tg.start_soon(tick)
        ticket = writer.submit(event(1))
        await wait_until(fsync.syncing.is_set)
        # The fsync hangs, and the loop runs on: other tasks keep ticking meanwhile.
        seen = ticks
        await wait_until(lambda: ticks >= seen + 20)
        assert not ticket.done and durable == []
        assert writer.inline_overruns == 1
        fsync.release.set()
        with anyio.fail_after(10):
            await ticket.wait()
        assert durable == ["evnt_1"]
        writer.close()
        tg.cancel_scope.cancel()
    log.close()
    assert read_back(tmp_path / "log") == [b"evnt_1"]


# -- lingering for what follows at once ----------------------------------------------------------


async def test_a_lingering_batch_waits_its_turns_for_what_follows_and_no_longer(
    tmp_path: Path,
) -> None:
    """``linger(2)``: an event submitted within two loop turns shares the batch's one fsync;
    one submitted later is written in a batch of its own."""
    disk = Disk()
    log = open_log(tmp_path / "log", disk)
    batches: list[list[str]] = []
    writer = LogWriter(
        log,
        encode,
        lambda events: batches.append([e.event_id for e in events]),
        inline_sync_limit=60.0,
    )

    async def submit_after(turns: int, n: int) -> None:
        for _ in range(turns):
            await anyio.lowlevel.checkpoint()
        await writer.submit(event(n)).wait()

    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        syncs = writer.syncs
        first = writer.submit(event(0))
        writer.linger(2)
        async with anyio.create_task_group() as senders:
            senders.start_soon(submit_after, 1, 1)
            senders.start_soon(submit_after, 8, 2)
            await first.wait()
        writer.close()
    log.close()
    assert batches == [["evnt_0", "evnt_1"], ["evnt_2"]]
    assert writer.syncs - syncs == 2
    assert read_back(tmp_path / "log") == [b"evnt_0", b"evnt_1", b"evnt_2"]


@af.step
async def instant(i: int) -> int:
    return i


@af.workflow
async def instant_steps(n: int) -> list[int]:
    return [await instant(i) for i in range(n)]


async def test_a_step_that_returns_at_once_shares_the_fsync_of_its_start(tmp_path: Path) -> None:
    """Each step is two events (started, completed); an instant one costs one fsync, not two."""
    steps = 40
    async with af.Runtime(tmp_path, workflows=[instant_steps]) as rt:
        writer = rt.journal.writer
        run = await rt.start(instant_steps, 0)
        await run.result()
        syncs = writer.syncs
        run = await rt.start(instant_steps, steps)
        assert await run.result() == list(range(steps))
        taken = writer.syncs - syncs
    # The run's start and end take a few of their own; two per step would be 80 and more.
    assert steps <= taken <= steps + 4, taken
    events = [e for e in read_events(tmp_path / "log") if e.run_id == run.run_id]
    started = [e.correlation_id for e in events if e.type == "step_started"]
    completed = [e.correlation_id for e in events if e.type == "step_completed"]
    # Every step once, by id: each started step completed exactly once, and no other.
    assert len(set(started)) == steps
    assert sorted(completed) == sorted(started)
    assert [e.data["result"] for e in events if e.type == "step_completed"] == list(range(steps))
