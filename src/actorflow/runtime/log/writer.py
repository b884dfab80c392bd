"""Group commit: the one writer of the log.

Submitting an event is synchronous: it is encoded at once (so a value that cannot be stored fails
its caller and commits nothing) and joins the open batch. One task writes batches: while a batch
is being written and fsynced in a worker thread, new submissions gather in the next one, so
concurrent appends share one fsync. A batch's waiters are woken, and its events handed to
``on_durable`` (which routes them to mailboxes, in log order), only after its fsync returned.

A failed write or fsync fails the writer for good: the batch's waiters and every later submit get
``LogWriteError``. A failed fsync is never retried: the kernel may have dropped the dirty pages,
so a later success would prove nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

import anyio
import anyio.abc
import anyio.to_thread

from ...errors import LeaseLostError, LogWriteError
from ..core.events import Event
from .store import EventStore, Position

__all__ = ["LogWriter", "Ticket"]

logger = logging.getLogger("actorflow.log")


class _Batch:
    __slots__ = ("events", "records", "done", "error", "ticket")

    def __init__(self) -> None:
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
    ) -> None:
        self._store = store
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
            try:
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

    def _write(self, records: list[bytes]) -> list[Position]:
        positions = self._store.append(records)
        if self._on_sync is None:
            self._store.sync()
        else:
            began = time.perf_counter()
            self._store.sync()
            self._on_sync(time.perf_counter() - began)
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
