"""Streams: chunks a run writes (``af.get_writable``) and anyone reads (``run.readable``).

A chunk is an event of its run (``stream_chunk``, correlation id = the namespace): it goes
through the journal like any event, so it is group-committed, durable before a step's
``write`` returns, encrypted at rest when encryption is on, and removed with its run's other
records. It is not part of the run's history: ``stream_index.py`` keeps, per stream, where
each chunk sits in the log, and a replay never reads chunks.

Writing: every chunk carries its writer (``"workflow"`` or the step's id), the attempt, and its
number among that writer's writes to the namespace; a write whose number the log already holds
for that writer is acknowledged without being appended (see ``writable.py`` for the rule).

Reading (``ChunkReader``): chunk ``i`` of a stream is read back from the log by its position,
a batch at a time, so a reader holds at most ``BATCH`` chunks however far behind it is, and
the writer never waits for readers. At the end of the stream a reader waits to be woken (a
chunk or the close made durable, the run's end), and takes what was made durable meanwhile
from the stream's small in-memory buffer. A run owned by another process (PostgreSQL) is read
from the database instead, woken by ``NOTIFY`` and polled.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import anyio
import anyio.to_thread

from ..errors import SerializationError, WorkflowDefinitionError, WorkflowRunNotFoundError
from . import codec
from .core import events as ev
from .core.commands import CloseStream, WriteChunk
from .core.events import Event
from .journal import Journal
from .limits import Limits
from .log.writer import Ticket
from .payloads import Payloads
from .state import State
from .writable import StepStreams

__all__ = ["BATCH", "ChunkReader", "RemoteStreams", "Streams"]

logger = logging.getLogger("actorflow.runtime")

#: Chunks read from the log per read (and the most a reader holds at once).
BATCH = 64
WORKFLOW_WRITER = "workflow"
_TERMINAL = frozenset({"completed", "failed", "cancelled"})


class RemoteStreams(Protocol):
    """Streams of runs owned by another process, read from the shared store."""

    poll_interval: float

    async def stream_rows(
        self, run_id: str, namespace: str, after: int, skip: int, limit: int
    ) -> tuple[list[tuple[int, bytes]], str | None]:
        """Up to ``limit`` stream records of the stream after log position ``after`` (or, with
        ``after < 0``, from its chunk number ``skip``), and the run's status read first
        (``None``: no such run)."""

    def watch_stream(self, run_id: str) -> anyio.Event:
        """An event set when the run's streams may change from now on (armed before a read,
        so a change during the read is not missed)."""

    async def stream_namespaces(self, run_id: str) -> list[str] | None:
        """The run's stream namespaces (``None``: no such run)."""


class Streams:
    """Writes chunks through the journal, and reads them back."""

    def __init__(
        self,
        state: State,
        journal: Journal,
        payloads: Payloads,
        limits: Limits,
        read: Callable[[list[int]], Sequence[bytes]],
    ) -> None:
        self.state = state
        self.index = state.streams
        self.journal = journal
        self.payloads = payloads
        self.limits = limits
        self.read = read

    # -- writing -------------------------------------------------------------------------------

    def submit_chunk(
        self, run_id: str, writer: str, attempt: int, namespace: str, seq: int, tree: Any
    ) -> Ticket | None:
        """Submit a chunk; ``None`` if this writer's chunk ``seq`` is in the log already.

        Raises:
            WorkflowDefinitionError: the run has ended, or the stream is closed.
            PayloadTooLargeError: over ``max_payload_bytes``.
            LogWriteError: the log has failed.
        """
        self._check_run(run_id)
        if seq < self.index.written(run_id, writer, namespace):
            return None
        log = self.index.stream(run_id, namespace)
        if log.closing:
            raise WorkflowDefinitionError(
                f"stream {namespace!r} of run {run_id} is closed; it takes no more chunks"
            )
        encoded = {"chunk": self.limits.check_size("a stream chunk", tree)}
        journal = self.journal
        data = {"index": log.submitted, "writer": writer, "attempt": attempt, "seq": seq,
                "chunk": tree}  # fmt: skip
        return journal.record(journal.event(run_id, ev.STREAM_CHUNK, namespace, data),
                              encoded=encoded)  # fmt: skip

    def submit_close(self, run_id: str, writer: str, namespace: str) -> Ticket | None:
        """Submit the close of a stream; ``None`` if it is closed already."""
        self._check_run(run_id)
        log = self.index.stream(run_id, namespace)
        if log.closing:
            return None
        journal = self.journal
        data = {"count": log.submitted, "writer": writer}
        return journal.record(journal.event(run_id, ev.STREAM_CLOSED, namespace, data))

    def _check_run(self, run_id: str) -> None:
        run = self.state.runs.get(run_id)
        if run is None or run.finished:
            raise WorkflowDefinitionError(
                f"run {run_id} has ended; its streams take no more chunks"
            )

    def from_workflow(self, run_id: str, command: WriteChunk | CloseStream) -> None:
        """Carry out a workflow's write or close (re-issued ones are recognised, not appended).

        A write the stream refuses (closed by a step, too large) cannot be raised into the
        workflow from here: it is logged and dropped.
        """
        try:
            if isinstance(command, WriteChunk):
                self.submit_chunk(run_id, WORKFLOW_WRITER, 0, command.namespace, command.seq,
                                  command.chunk)  # fmt: skip
            else:
                self.submit_close(run_id, WORKFLOW_WRITER, command.namespace)
        except (WorkflowDefinitionError, SerializationError) as exc:
            # Closed by a step, or over max_payload_bytes: nothing is appended. (A workflow's
            # write is not awaited on disk, so it cannot fail at its ``await``.)
            logger.error("run %s: a stream write of its workflow was refused: %s", run_id, exc)

    async def write_from_step(self, ctx: StepStreams, namespace: str, seq: int, chunk: Any) -> None:
        tree = codec.to_tree(chunk, root="chunk")
        self.journal.admit()
        ticket = self.submit_chunk(ctx.run_id, ctx.step_id, ctx.attempt, namespace, seq, tree)
        await self._settle(ticket)

    async def close_from_step(self, ctx: StepStreams, namespace: str) -> None:
        await self._settle(self.submit_close(ctx.run_id, ctx.step_id, namespace))

    async def _settle(self, ticket: Ticket | None) -> None:
        if ticket is None:
            # Written before (an earlier attempt): it may still be on its way to disk.
            await self.journal.flush()
        else:
            await ticket.wait()

    # -- reading -------------------------------------------------------------------------------

    def reader(self, run_id: str, namespace: str, start: int, remote: RemoteStreams) -> ChunkReader:
        return ChunkReader(self, run_id, namespace, start, remote)

    async def namespaces(self, run_id: str, remote: RemoteStreams) -> list[str]:
        """The namespaces the run has written to (or closed).

        Raises:
            WorkflowRunNotFoundError: no run has this id.
        """
        if run_id in self.state.runs:
            await self.journal.flush()
            return self.index.namespaces(run_id)
        found = await remote.stream_namespaces(run_id)
        if found is None:
            raise WorkflowRunNotFoundError(run_id)
        return found


class ChunkReader:
    """``(index, chunk)`` from ``start`` on, in order; ends when the stream is closed or the
    run has ended (after the last chunk). ``next_index`` is where to resume after a break.

    Raises (from iteration):
        WorkflowRunNotFoundError: no run has this id.
        DecryptionError, StorageError: a chunk cannot be read back.
    """

    def __init__(
        self, streams: Streams, run_id: str, namespace: str, start: int, remote: RemoteStreams
    ) -> None:
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise WorkflowDefinitionError(f"start_index must be an integer >= 0, not {start!r}")
        self._streams = streams
        self._remote = remote
        self.run_id = run_id
        self.namespace = namespace
        self.next_index = start
        self._buffer: deque[tuple[int, Any]] = deque()
        self._ended = False
        self._after = -1  # remote: the log position read up to
        self._closed = False  # remote: the close was read
        #: Why iteration ended: ``"closed"`` (the stream) or ``"run_ended"``.
        self.end_reason: str | None = None

    def __aiter__(self) -> ChunkReader:
        return self

    async def __anext__(self) -> tuple[int, Any]:
        while not self._buffer:
            if self._ended:
                raise StopAsyncIteration
            if self.run_id in self._streams.state.runs:
                await self._fill_local()
            else:
                await self._fill_remote()
        item = self._buffer.popleft()
        self.next_index = item[0] + 1
        return item

    async def aclose(self) -> None:
        self._ended = True
        self._buffer.clear()

    async def next_within(self, seconds: float) -> tuple[int, Any] | None:
        """The next chunk, or ``None`` if none came within ``seconds``.

        Raises:
            StopAsyncIteration: the stream is over.
        """
        with anyio.move_on_after(seconds):
            return await self.__anext__()
        return None

    def _value(self, event: Event) -> Any:
        return codec.from_tree(self._streams.payloads.value(event, event.data.get("chunk")))

    async def _fill_local(self) -> None:
        streams = self._streams
        run = streams.state.runs[self.run_id]
        log = streams.index.stream(self.run_id, self.namespace)
        n = self.next_index
        available = len(log.positions)
        if n < available:
            recent = log.recent
            if recent and int(recent[0].data["index"]) <= n:
                for event in list(recent):
                    index = int(event.data["index"])
                    if index >= n and len(self._buffer) < BATCH:
                        self._buffer.append((index, self._value(event)))
                if self._buffer:
                    return
            positions = log.positions[n : n + BATCH].tolist()
            records = await anyio.to_thread.run_sync(streams.read, positions)
            decode = streams.payloads.decode
            for offset, (record, position) in enumerate(zip(records, positions, strict=True)):
                event = decode(record, position)
                self._buffer.append((n + offset, codec.from_tree(event.data.get("chunk"))))
            return
        if log.closed or (run.terminal is not None and run.terminal.position >= 0):
            self._ended = True
            self.end_reason = "closed" if log.closed else "run_ended"
            return
        wake = log.wake
        if wake is None:
            wake = log.wake = anyio.Event()
        await wake.wait()

    async def _fill_remote(self) -> None:
        streams = self._streams
        remote = self._remote
        changed = remote.watch_stream(self.run_id)
        rows, status = await remote.stream_rows(
            self.run_id, self.namespace, self._after, self.next_index, BATCH
        )
        if status is None:
            raise WorkflowRunNotFoundError(self.run_id)
        decode = streams.payloads.decode
        for position, record in rows:
            event = decode(record, position)
            self._after = position
            if event.type == ev.STREAM_CHUNK:
                index = int(event.data["index"])
                if index >= self.next_index:
                    self._buffer.append((index, codec.from_tree(event.data.get("chunk"))))
            else:
                self._closed = True
        if self._buffer:
            return
        if len(rows) < BATCH and (self._closed or status in _TERMINAL):
            self._ended = True
            self.end_reason = "closed" if self._closed else "run_ended"
            return
        if not rows:
            with anyio.move_on_after(remote.poll_interval):
                await changed.wait()
