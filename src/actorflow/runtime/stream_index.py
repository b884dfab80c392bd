"""Where each run's stream chunks sit in the log: positions by index, not the chunks themselves.

Stream records (``stream_chunk``, ``stream_closed``) are events of their run, so they live and
go with the run's other records, but they are not part of its history: a replay never reads
them. This index is their fold, kept beside ``State``:

- at submit (``apply``): how many chunks each stream has, and how many each *writer* (the
  workflow, or one step) has put there, which is what lets a re-issued write (replay, a retried
  step) be recognised and not appended twice;
- once durable (``durable``): the chunk's log position, appended to the stream's positions, so
  a reader can fetch chunk ``i`` from the log. Eight bytes a chunk stay in memory; the chunks
  stay on disk.

Readers wait on ``StreamLog.wake`` (an event object the reader side makes; this module only
calls its ``set``). From when a reader waits at the end of a stream, the chunks made durable
are kept in ``recent`` (at most ``RECENT``), so a reader following the tip needs no read.
"""

from __future__ import annotations

from array import array
from collections import deque
from typing import Any

from .core import events as ev
from .core.events import Event

__all__ = ["RECENT", "RunStreams", "StreamIndex", "StreamLog"]

#: Durable chunks kept in memory per stream while a reader waits at its end.
RECENT = 64


class StreamLog:
    """One stream (a run and a namespace)."""

    __slots__ = ("positions", "submitted", "closing", "closed", "wake", "recent")

    def __init__(self) -> None:
        #: Log positions of the durable chunks, by index.
        self.positions = array("q")
        #: Chunks submitted (durable or on their way); the next chunk's index.
        self.submitted = 0
        #: A close is submitted / durable.
        self.closing = False
        self.closed = False
        #: Set (and dropped) when a chunk or the close becomes durable or the run ends.
        self.wake: Any = None
        #: Durable chunk events not yet read by the reader waiting at the end, if one waits.
        self.recent: deque[Event] | None = None

    def notify(self) -> None:
        wake, self.wake = self.wake, None
        if wake is not None:
            wake.set()


class RunStreams:
    """The streams of one run, and how far each writer got in each."""

    __slots__ = ("streams", "writes")

    def __init__(self) -> None:
        self.streams: dict[str, StreamLog] = {}
        #: (writer, namespace) -> chunks that writer has in the log (its next write's number).
        self.writes: dict[tuple[str, str], int] = {}


class StreamIndex:
    """Every run's streams: filled by ``State.apply`` and the journal, read by ``streams.py``."""

    __slots__ = ("runs",)

    def __init__(self) -> None:
        self.runs: dict[str, RunStreams] = {}

    def stream(self, run_id: str, namespace: str) -> StreamLog:
        """The stream, made empty if nothing was written to it yet (readers may wait on it)."""
        run = self.runs.get(run_id)
        if run is None:
            run = self.runs[run_id] = RunStreams()
        log = run.streams.get(namespace)
        if log is None:
            log = run.streams[namespace] = StreamLog()
        return log

    def find(self, run_id: str, namespace: str) -> StreamLog | None:
        run = self.runs.get(run_id)
        return None if run is None else run.streams.get(namespace)

    def written(self, run_id: str, writer: str, namespace: str) -> int:
        """How many chunks ``writer`` has in the log (durable or submitted) in ``namespace``."""
        run = self.runs.get(run_id)
        return 0 if run is None else run.writes.get((writer, namespace), 0)

    def namespaces(self, run_id: str) -> list[str]:
        run = self.runs.get(run_id)
        if run is None:
            return []
        return sorted(ns for ns, log in run.streams.items() if log.submitted or log.closing)

    # -- the fold ------------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Count a submitted (or recovered) stream record."""
        namespace = event.correlation_id or ""
        log = self.stream(event.run_id, namespace)
        data = event.data
        if event.type == ev.STREAM_CHUNK:
            log.submitted += 1
            writes = self.runs[event.run_id].writes
            key = (str(data.get("writer", "")), namespace)
            seq = int(data.get("seq", 0))
            if seq >= writes.get(key, 0):
                writes[key] = seq + 1
        else:
            log.closing = True

    def durable(self, event: Event) -> None:
        """A stream record is durable at ``event.position``: readers may see it now."""
        log = self.find(event.run_id, event.correlation_id or "")
        if log is None:
            return  # a record of a run this state does not hold (its apply was skipped)
        if event.type == ev.STREAM_CHUNK:
            log.positions.append(event.position)
            recent = log.recent
            # Buffer from when a reader waits at the end until the buffer is full with no
            # reader waiting: an abandoned reader leaves at most RECENT events behind.
            if log.wake is not None or (recent is not None and len(recent) < RECENT):
                if recent is None:
                    recent = log.recent = deque(maxlen=RECENT)
                recent.append(event)
            else:
                log.recent = None
        else:
            log.closed = True
        log.notify()

    def ended(self, run_id: str) -> None:
        """The run's end is durable: wake its readers (they stop at the end of what exists)."""
        run = self.runs.get(run_id)
        if run is not None:
            for log in run.streams.values():
                log.recent = None
                log.notify()
