"""Group commit: the one writer of the log.

Submitting an event is synchronous: it is encoded at once (so a value that cannot be stored fails
its caller and commits nothing) and joins the open batch. One task writes batches: while a batch
is being written and fsynced in a worker thread, new submissions gather in the next one, so
concurrent appends share one fsync. A batch's waiters are woken, and its events handed to
``on_durable`` (which routes them to mailboxes, in log order), only after its fsync returned.

A small batch on a local store goes to a thread of the writer's own, and the event loop waits
for it there, blocked, for at most ``inline_sync_limit``. Few events in a batch means few callers
waiting on the loop, so it has little to overlap with the fsync, while the round trip through
``anyio.to_thread`` (a pool hand-off, then a wake-up of the loop through its own poll) costs
about as much again as one fsync on a fast disk; a blocked wait is woken straight by the writing
thread. A fsync that outlasts the limit is then awaited like any other, so a hung disk stalls the
loop for the limit, never longer. A decaying maximum of recent sync times keeps batches off that
path altogether once fsyncs are slow, until a run of fast ones follows.

A failed write or fsync fails the writer for good: the batch's waiters and every later submit get
``LogWriteError``. A failed fsync is never retried: the kernel may have dropped the dirty pages,
so a later success would prove nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from ...errors import LeaseLostError, LogWriteError
from ..core.events import Event
from .store import EventStore, Position

__all__ = ["LogWriter", "Ticket"]

logger = logging.getLogger("actorflow.log")


class _Batch:
    __slots__ = ("events", "records", "done", "error", "ticket", "linger")

    def __init__(self) -> None:
        #: Loop turns the writer still gives this batch before taking it (``LogWriter.linger``).
        self.linger = 0
        self.events: list[Event] = []
        self.records: list[bytes] = []
        self.done = anyio.Event()
        self.error: BaseException | None = None
        #: The one ticket every event of the batch gets (a ticket is its batch's outcome).
        self.ticket = Ticket(self)


class Ticket:
    """A claim on the durability of one submitted event."""

    __slots__ = ("_batch",)

    def __init__(self, batch: _Batch) -> None:
        self._batch = batch

    async def wait(self) -> None:
        """Return once the event is durable (fsynced, unless durability is "none").

        Raises:
            LogWriteError: the write or fsync of its batch failed.
        """
        batch = self._batch
        if not batch.done.is_set():
            await batch.done.wait()
        if batch.error is not None:
            if isinstance(batch.error, LeaseLostError):
                raise LeaseLostError(str(batch.error)) from batch.error
            raise LogWriteError(f"the event log could not be written: {batch.error}") from (
                batch.error
            )

    @property
    def durable(self) -> bool:
        return self._batch.done.is_set() and self._batch.error is None

    @property
    def done(self) -> bool:
        """Written, or failed."""
        return self._batch.done.is_set()


class LogWriter:
    """Owns all writes to an ``EventStore``; run ``run()`` in the supervisor's task group."""

    def __init__(
        self,
        store: EventStore,
        encode: Callable[[Event, bytes | str | None, Mapping[str, bytes] | None], bytes],
        on_durable: Callable[[Sequence[Event]], None],
        *,
        max_batch: int = 4096,
        on_failure: Callable[[BaseException], None] | None = None,
        on_sync: Callable[[float], None] | None = None,
        inline_events: int = 2,
        inline_sync_limit: float = 0.001,
    ) -> None:
        self._store = store
        # Only a store that writes to local files (or memory) may block the loop: a networked
        # one (PostgreSQL) has round trips of unbounded length.
        self._inline_events = inline_events if getattr(store, "writes_locally", False) else 0
        self._inline_sync_limit = inline_sync_limit
        #: Write-and-sync time of recent batches, seconds: the slowest, decaying by 1/8 a batch.
        self.sync_estimate = 0.0
        #: Small batches the loop waited for blocked, and those of them it stopped waiting for.
        self.inline_batches = 0
        self.inline_overruns = 0
        self._inline_thread: _WritingThread | None = None
        #: Called from the writing thread with each sync's duration in seconds (metrics).
        self._on_sync = on_sync
        self._encode = encode
        self._on_durable = on_durable
        self._on_failure = on_failure
        self._max_batch = max_batch
        self._open = _Batch()
        self._queue: list[_Batch] = []
        self._in_flight: _Batch | None = None
        self._wakeup = anyio.Event()
        self._closing = False
        self.failure: BaseException | None = None
        self.appended = 0
        self.syncs = 0

    @property
    def healthy(self) -> bool:
        return self.failure is None

    @property
    def backlog(self) -> int:
        """Events submitted and not yet durable."""
        pending = len(self._open.events)  # read at every resume: the queue is mostly empty
        if self._queue:
            pending += sum(len(b.events) for b in self._queue)
        if self._in_flight is not None:
            pending += len(self._in_flight.events)
        return pending

    def check(self) -> None:
        """Raise if the writer can accept nothing.

        Raises:
            LogWriteError: an earlier write or fsync failed, or the writer is closed.
        """
        if self.failure is not None:
            raise LogWriteError(
                f"the event log failed earlier ({self.failure}); nothing more is accepted until "
                "the runtime restarts and recovers from what is on disk"
            ) from self.failure
        if self._closing:
            raise LogWriteError("the event log is closed")

    def submit(
        self,
        event: Event,
        key: bytes | str | None = None,
        *,
        record: bytes | None = None,
        encoded: Mapping[str, bytes] | None = None,
    ) -> Ticket:
        """Encode ``event`` (its payload under ``key`` if given) and add it to the open batch.

        ``record``, if given, is ``event`` already encoded (a record made by another process,
        appended byte for byte). ``encoded``: user values already serialized (see
        ``Payloads.encode``). Never blocks.

        Raises:
            LogWriteError: the writer has failed or is closed.
            SerializationError: the event cannot be encoded (nothing was added).
        """
        if self.failure is not None or self._closing:
            self.check()
        if record is None:
            record = self._encode(event, key, encoded)
        batch = self._open
        events = batch.events
        events.append(event)
        batch.records.append(record)
        if len(events) == 1:
            # The writer waits only while the open batch is empty, and looks at the batches
            # again after every write: the first event of a batch is the one to wake it for.
            self._wakeup.set()
        if len(events) >= self._max_batch:
            self._queue.append(batch)
            self._open = _Batch()
        return batch.ticket

    def linger(self, turns: int) -> None:
        """Let the open batch wait up to ``turns`` loop turns before it is written.

        For an event that tasks woken now may follow at once: a step that returns without
        waiting records its outcome within two turns of its ``step_started``, and both then
        share one write and one fsync instead of taking one each. A full batch is written at
        once all the same, and a batch never waits longer than this many turns.
        """
        batch = self._open
        if turns > batch.linger:
            batch.linger = turns

    def ticket_for_all(self) -> Ticket | None:
        """A ticket that is durable once everything submitted so far is."""
        if self._open.events:
            return self._open.ticket
        if self._queue:
            return self._queue[-1].ticket
        if self._in_flight is not None:
            return self._in_flight.ticket
        return None

    async def flush(self) -> None:
        """Wait until everything submitted so far is durable.

        Raises:
            LogWriteError: a write or fsync failed.
        """
        ticket = self.ticket_for_all()
        if ticket is not None:
            await ticket.wait()
        elif self.failure is not None:
            self.check()

    def close(self) -> None:
        """Stop accepting events; ``run()`` returns after writing what was submitted."""
        self._closing = True
        self._wakeup.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Write batches until closed. Cancelling it abandons unwritten batches (unacknowledged)."""
        task_status.started()
        try:
            await self._write_batches()
        finally:
            self._stop_inline_thread()

    async def _write_batches(self) -> None:
        while True:
            if not self._queue and not self._open.events:
                if self._closing or self.failure is not None:
                    return
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                continue
            if self._queue:
                batch = self._queue.pop(0)
            elif self._open.linger and not self._closing:
                self._open.linger -= 1
                await anyio.lowlevel.checkpoint()
                continue
            else:
                batch, self._open = self._open, _Batch()
            self._in_flight = batch
            try:
                if (
                    len(batch.records) <= self._inline_events
                    and self.sync_estimate <= self._inline_sync_limit
                ):
                    positions = await self._write_waiting(batch.records)
                else:
                    positions = await anyio.to_thread.run_sync(self._write, batch.records)
            except BaseException as exc:
                self._fail(batch, exc)
                if not isinstance(exc, Exception):
                    raise
                return
            finally:
                self._in_flight = None
            for event, position in zip(batch.events, positions, strict=True):
                event.position = position
            self.appended += len(batch.events)
            self.syncs += 1
            batch.records = []
            batch.done.set()
            try:
                self._on_durable(batch.events)
            except Exception:  # a routing bug must not stop the log; the events are safe
                logger.exception("routing durable events failed")
            if self._queue or self._open.events:
                # A blocked wait does not yield: let the callers just woken run first.
                await anyio.lowlevel.checkpoint()

    async def _write_waiting(self, records: list[bytes]) -> list[Position]:
        """Write in the writer's own thread; wait for it blocked, up to the limit, then awaiting."""
        thread = self._inline_thread
        if thread is None:
            thread = self._inline_thread = _WritingThread(self._write)
        thread.hand(records)
        self.inline_batches += 1
        if not thread.finished(self._inline_sync_limit):
            self.inline_overruns += 1
            await anyio.to_thread.run_sync(thread.finished, None)
        return thread.outcome()

    def _stop_inline_thread(self) -> None:
        if self._inline_thread is not None:
            # Idle: ``run`` waits for every write it hands over, so it stops at once.
            self._inline_thread.stop()
            self._inline_thread = None

    def _write(self, records: list[bytes]) -> list[Position]:
        began = time.perf_counter()
        positions = self._store.append(records)
        synced = time.perf_counter()
        self._store.sync()
        ended = time.perf_counter()
        if self._on_sync is not None:
            self._on_sync(ended - synced)
        # Up at once, down slowly: one stall sends the next batches to the thread, and only a
        # run of fast syncs brings them back. A plain float store, read by the loop thread.
        took = ended - began
        estimate = self.sync_estimate
        self.sync_estimate = took if took > estimate else estimate + (took - estimate) * 0.125
        return positions

    def _fail(self, batch: _Batch, exc: BaseException) -> None:
        self.failure = exc
        logger.error("event log write failed, the log accepts nothing more: %s", exc)
        for failed in [batch, *self._queue, self._open]:
            failed.error = exc
            failed.done.set()
        self._queue.clear()
        if self._on_failure is not None:
            self._on_failure(exc)

    def stop_accepting(self, exc: BaseException) -> None:
        """Fail everything not yet being written, and every later submit, with ``exc``.

        The batch being written (if any) finishes and reports its own outcome.
        """
        if self.failure is not None:
            return
        self.failure = exc
        for failed in [*self._queue, self._open]:
            failed.error = exc
            failed.done.set()
        self._queue.clear()
        self._open = _Batch()
        self._wakeup.set()


class _WritingThread:
    """One thread that writes one batch at a time, handed over and back with a lock each way.

    Two plain locks are the cheapest hand-over the interpreter offers between two threads (one
    futex wake-up each way, no queue, no condition variable), and blocking on a lock releases the
    GIL, so the thread runs the moment the loop starts waiting.
    """

    __slots__ = ("_done", "_error", "_go", "_records", "_result", "_stopping", "_thread", "_write")

    def __init__(self, write: Callable[[list[bytes]], list[Position]]) -> None:
        self._write = write
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._records: list[bytes] = []
        self._result: list[Position] = []
        self._error: BaseException | None = None
        self._stopping = False
        # A daemon only so that a write hung on a dead disk cannot keep the process from exiting.
        self._thread = threading.Thread(
            target=self._serve, name="actorflow-log-writer", daemon=True
        )
        self._thread.start()

    def hand(self, records: list[bytes]) -> None:
        self._records = records
        self._go.release()

    def finished(self, timeout: float | None) -> bool:
        """Wait, blocked, up to ``timeout`` seconds (``None``: for good) for the handed batch."""
        return self._done.acquire(timeout=-1 if timeout is None else timeout)

    def outcome(self) -> list[Position]:
        """The positions of the finished batch, or its error raised."""
        error, self._error = self._error, None
        if error is not None:
            raise error
        return self._result

    def stop(self) -> None:
        """Let the thread end; wait a moment for it (idle, it ends at once)."""
        self._stopping = True
        if self._go.locked():  # else it has a batch still to take, and ends after writing it
            self._go.release()
        self._thread.join(1.0)

    def _serve(self) -> None:
        while True:
            self._go.acquire()
            if self._stopping:
                return
            try:
                self._result = self._write(self._records)
            except BaseException as exc:  # handed back to the loop, which fails the log
                self._error = exc
            self._records = []
            self._done.release()
            if self._stopping:
                return
