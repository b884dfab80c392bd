"""The group-commit writer on its own: what its module docstring promises, on asyncio and trio.

- no waiter is woken, and no event routed, before its batch's sync returned;
- events reach ``on_durable`` in log order, with their positions;
- a failed write or sync fails the writer for good and is never retried;
- ``run()`` owns its thread: the thread is gone when ``run()`` returns, however it returns
  (closed, failed or cancelled), and a cancelled ``run()`` still settles the batch in flight.

The store is a ``MemoryLog`` behind a gate: ``sync`` blocks on a ``threading.Event`` the test
opens, so "the batch is being synced" is a state the test holds, not a race it hopes to win.
The only waits on real time are for the writer's thread to reach that gate.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from actorflow.errors import LogWriteError
from actorflow.runtime.core.events import Event
from actorflow.runtime.log.memory_log import MemoryLog
from actorflow.runtime.log.store import Position
from actorflow.runtime.log.writer import LogWriter

pytestmark = pytest.mark.anyio

WRITER_THREAD = "actorflow-log-writer"


class GatedStore(MemoryLog):
    """A memory store whose ``sync`` waits for ``gate`` and can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        list(self.scan())
        self.gate = threading.Event()
        self.gate.set()
        self.syncing = threading.Event()  # set while a sync waits at the gate
        self.fail_sync: OSError | None = None
        self.appends: list[int] = []
        self.syncs = 0
        self.threads: set[str] = set()

    def append(self, records: Sequence[bytes]) -> list[Position]:
        self.threads.add(threading.current_thread().name)
        self.appends.append(len(records))
        return super().append(records)

    def sync(self) -> None:
        self.syncs += 1
        self.syncing.set()
        self.gate.wait()
        self.syncing.clear()
        if self.fail_sync is not None:
            raise LogWriteError(f"fsync failed: {self.fail_sync}") from self.fail_sync
        super().sync()


def event(i: int) -> Event:
    return Event(f"evnt_{i:04d}", "wrun_1", "hook_received", "hook_1", 0.0, {"i": i})


def encode(ev: Event, key: bytes | str | None) -> bytes:
    return ev.event_id.encode()


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == WRITER_THREAD]


async def wait_syncing(store: GatedStore) -> None:
    """Wait (really) until the writer's thread sits in ``sync`` at the closed gate."""
    with anyio.fail_after(10):
        await anyio.to_thread.run_sync(store.syncing.wait)


async def test_waiters_wake_only_after_sync_and_events_route_in_order() -> None:
    store = GatedStore()
    routed: list[Event] = []
    writer = LogWriter(store, encode, routed.extend, max_batch=3)
    store.gate.clear()
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        first = writer.submit(event(0))
        await wait_syncing(store)
        # Submitted while the first batch syncs: they gather in the next batches (3 at most).
        later = [writer.submit(event(i)) for i in range(1, 8)]
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        assert not first.done and not routed, "woken before its sync returned"
        assert writer.backlog == 8
        store.gate.set()
        await first.wait()
        for ticket in later:
            await ticket.wait()
        writer.close()
    assert [e.event_id for e in routed] == [event(i).event_id for i in range(8)]
    positions = [e.position for e in routed]
    assert positions == sorted(positions) and len(set(positions)) == 8
    assert store.appends == [1, 3, 3, 1] and store.syncs == 4 == writer.syncs
    assert writer.appended == 8 and writer.backlog == 0
    assert store.threads == {WRITER_THREAD}, "the store is called only from the writer's thread"
    assert writer_threads() == []


async def test_failed_sync_fails_for_good_and_is_never_retried() -> None:
    store = GatedStore()
    store.fail_sync = OSError(5, "Input/output error")
    failures: list[BaseException] = []
    writer = LogWriter(store, encode, lambda events: None, on_failure=failures.append)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        ticket = writer.submit(event(0))
        with pytest.raises(LogWriteError, match="Input/output error"):
            await ticket.wait()
        # run() has returned by itself: nothing is written after a failed sync.
    assert store.syncs == 1 and not writer.healthy and len(failures) == 1
    with pytest.raises(LogWriteError, match="failed earlier"):
        writer.submit(event(1))
    with pytest.raises(LogWriteError):
        await writer.flush()
    assert writer_threads() == []


async def test_events_of_later_batches_fail_with_the_one_in_flight() -> None:
    store = GatedStore()
    store.gate.clear()
    writer = LogWriter(store, encode, lambda events: None)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        first = writer.submit(event(0))
        await wait_syncing(store)
        second = writer.submit(event(1))
        store.fail_sync = OSError(28, "No space left on device")
        store.gate.set()
        for ticket in (first, second):
            with pytest.raises(LogWriteError, match="No space left"):
                await ticket.wait()
    assert store.syncs == 1
    assert writer_threads() == []


async def test_close_writes_what_was_submitted_then_joins_the_thread() -> None:
    store = GatedStore()
    writer = LogWriter(store, encode, lambda events: None)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        assert len(writer_threads()) == 1
        tickets = [writer.submit(event(i)) for i in range(5)]
        writer.close()
        with pytest.raises(LogWriteError, match="closed"):
            writer.submit(event(9))
    assert all(t.durable for t in tickets)
    assert writer_threads() == []


async def test_cancelled_run_settles_the_batch_in_flight_and_fails_the_rest() -> None:
    store = GatedStore()
    store.gate.clear()
    writer = LogWriter(store, encode, lambda events: None)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        first = writer.submit(event(0))
        await wait_syncing(store)
        second = writer.submit(event(1))
        tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            for _ in range(10):  # let run() see the cancellation while the thread syncs
                await anyio.lowlevel.checkpoint()
        assert not first.done
        # The thread is still in sync: run() must wait for it rather than leave it behind.
        store.gate.set()
    assert first.durable, "a batch the store synced is acknowledged, cancelled or not"
    assert second.done and not second.durable
    with pytest.raises(LogWriteError, match="stopped"):
        await second.wait()
    assert store.syncs == 1
    assert writer_threads() == []


async def test_cancelled_while_idle() -> None:
    store = GatedStore()
    writer = LogWriter(store, encode, lambda events: None)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            await tg.start(writer.run)
            await writer.submit(event(0)).wait()
            scope.cancel()
    assert scope.cancelled_caught
    assert writer_threads() == []
    with pytest.raises(LogWriteError):
        writer.submit(event(1))
