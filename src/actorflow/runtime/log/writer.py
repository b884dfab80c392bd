"""Group commit: the one writer of the log.

Submitting an event is synchronous: it is encoded at once (so a value that cannot be stored fails
its caller and commits nothing) and joins the open batch. One task writes batches: while a batch
is being written and fsynced in the writer's own thread, new submissions gather in the next one,
so concurrent appends share one fsync. That thread is started and joined by ``run()``; a batch
reaches it with one wake-up and its outcome comes back with one, with no thread pool between.
A batch's waiters are woken, and its events handed to ``on_durable`` (which routes them to
mailboxes, in log order), only after its fsync returned.

A failed write or fsync fails the writer for good: the batch's waiters and every later submit get
``LogWriteError``. A failed fsync is never retried: the kernel may have dropped the dirty pages,
so a later success would prove nothing.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable, Sequence
from types import TracebackType

import anyio
import anyio.abc
import anyio.lowlevel

from ...errors import LeaseLostError, LogWriteError
from ..core.events import Event
from .store import EventStore, Position

__all__ = ["LogWriter", "Ticket"]

logger = logging.getLogger("actorflow.log")


class _Batch:
    __slots__ = ("events", "records", "done", "error")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.records: list[bytes] = []
        self.done = anyio.Event()
        self.error: BaseException | None = None


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
        encode: Callable[[Event, bytes | str | None], bytes],
        on_durable: Callable[[Sequence[Event]], None],
        *,
        max_batch: int = 4096,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._store = store
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
        pending = len(self._open.events) + sum(len(b.events) for b in self._queue)
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
        self, event: Event, key: bytes | str | None = None, *, record: bytes | None = None
    ) -> Ticket:
        """Encode ``event`` (its payload under ``key`` if given) and add it to the open batch.

        ``record``, if given, is ``event`` already encoded (a record made by another process,
        appended byte for byte). Never blocks.

        Raises:
            LogWriteError: the writer has failed or is closed.
            SerializationError: the event cannot be encoded (nothing was added).
        """
        self.check()
        if record is None:
            record = self._encode(event, key)
        batch = self._open
        batch.events.append(event)
        batch.records.append(record)
        if len(batch.events) >= self._max_batch:
            self._queue.append(batch)
            self._open = _Batch()
        self._wakeup.set()
        return Ticket(batch)

    def ticket_for_all(self) -> Ticket | None:
        """A ticket that is durable once everything submitted so far is."""
        if self._open.events:
            return Ticket(self._open)
        if self._queue:
            return Ticket(self._queue[-1])
        if self._in_flight is not None:
            return Ticket(self._in_flight)
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
        """Write batches until closed. Cancelling it abandons unwritten batches (unacknowledged).

        The writing happens in a thread that lives exactly as long as this call: started here,
        and stopped and joined before it returns, however it returns.
        """
        with _WriterThread(self._write) as thread:
            try:
                task_status.started()
                await self._write_batches(thread)
            except BaseException:
                # Unwritten batches are abandoned: their waiters learn it rather than hang.
                if self.failure is None:
                    self.stop_accepting(LogWriteError("the log writer stopped before this write"))
                raise
            finally:
                with anyio.CancelScope(shield=True):
                    await thread.stop()

    async def _write_batches(self, thread: _WriterThread) -> None:
        while True:
            if not self._queue and not self._open.events:
                if self._closing or self.failure is not None:
                    return
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                continue
            if self._queue:
                batch = self._queue.pop(0)
            else:
                batch, self._open = self._open, _Batch()
            self._in_flight = batch
            thread.send(batch.records)
            try:
                outcome = await thread.receive()
            except BaseException:
                # Cancelled while the thread writes: the batch's outcome still decides what its
                # waiters learn, so wait for it (the thread cannot be interrupted anyway).
                with anyio.CancelScope(shield=True):
                    outcome = await thread.receive()
                self._land(batch, outcome)
                raise
            if not self._land(batch, outcome):
                return

    def _land(self, batch: _Batch, outcome: list[Position] | BaseException) -> bool:
        """Settle a written batch: wake its waiters and route its events, or fail the writer.

        Returns whether the writer can go on.
        """
        self._in_flight = None
        if isinstance(outcome, BaseException):
            self._fail(batch, outcome)
            if not isinstance(outcome, Exception):
                raise outcome
            return False
        for event, position in zip(batch.events, outcome, strict=True):
            event.position = position
        self.appended += len(batch.events)
        self.syncs += 1
        batch.records = []
        batch.done.set()
        try:
            self._on_durable(batch.events)
        except Exception:  # a routing bug must not stop the log; the events are safe
            logger.exception("routing durable events failed")
        return True

    def _write(self, records: list[bytes]) -> list[Position]:
        positions = self._store.append(records)
        self._store.sync()
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


_STOP = None


class _WriterThread:
    """The one thread that calls the store's blocking ``append`` and ``sync``.

    A batch reaches it through a queue (one wake-up of the thread) and its outcome comes back
    through a socket pair that the event loop watches (one wake-up of the loop): no thread pool,
    no task spawned per batch, the same on asyncio and trio. Only one batch is in flight at a
    time. Used as a context manager by ``LogWriter.run()``, which owns the thread's whole life.
    """

    __slots__ = ("_inbox", "_outcome", "_receive", "_send", "_thread", "_write")

    def __init__(self, write: Callable[[list[bytes]], list[Position]]) -> None:
        self._write = write
        self._inbox: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._outcome: list[Position] | BaseException | None = None
        self._receive, self._send = socket.socketpair()
        self._receive.setblocking(False)
        self._thread = threading.Thread(target=self._serve, name="actorflow-log-writer")

    def __enter__(self) -> _WriterThread:
        try:
            self._thread.start()
        except BaseException:
            self._close_sockets()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # stop() has normally been awaited; if not, wait here rather than leave the thread.
        if self._thread.is_alive():
            self._inbox.put(_STOP)
            self._thread.join()
        self._close_sockets()

    def send(self, records: list[bytes]) -> None:
        """Hand ``records`` to the thread, to be appended and synced; never blocks."""
        self._inbox.put(records)

    async def receive(self) -> list[Position] | BaseException:
        """Wait for the outcome of the batch sent last: its positions, or what the store raised."""
        outcome = await self._wait_outcome()
        assert outcome is not None
        return outcome

    async def stop(self) -> None:
        """Let the thread finish and wait until it has (it is idle: nothing is in flight)."""
        if not self._thread.is_alive():
            return
        self._inbox.put(_STOP)
        await self._wait_outcome()
        self._thread.join()  # it has sent its last byte and is returning: no real wait

    async def _wait_outcome(self) -> list[Position] | BaseException | None:
        while True:
            await anyio.wait_readable(self._receive)
            try:
                self._receive.recv(64)
            except BlockingIOError:  # woken without data: wait again
                continue
            break
        outcome, self._outcome = self._outcome, None
        return outcome

    def _serve(self) -> None:
        while True:
            records = self._inbox.get()
            if records is _STOP:
                self._send.send(b"\0")
                return
            try:
                self._outcome = self._write(records)
            except BaseException as exc:  # handed to the loop, which fails the writer with it
                self._outcome = exc
            self._send.send(b"\0")

    def _close_sockets(self) -> None:
        self._receive.close()
        self._send.close()
