"""The disk half of a retention pass, one kind per store, chosen once when the runtime opens.

- ``SegmentReclaim`` (the file log): every sealed segment holding records of runs no longer in
  the state is rewritten without them (``log/compaction.py``) and the kept records' new
  positions are applied on the event loop, in one step. The replaced files are unlinked at the
  next pass (or at close), once every read that might hold an old position has finished.
- ``RowReclaim`` (a store with ``prune_expired``, PostgreSQL): the store deletes the expired
  runs' rows in bounded batches.
- ``NoReclaim``: nothing on disk to give back (the memory log, or a store without either).

``retention.py`` decides when a pass runs and what leaves memory; it never asks which store it
has.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread

from .log import compaction
from .log.compaction import CrashPoint, Pacer, Rewrite
from .log.file_log import FileLog
from .log.store import EventStore
from .state import State

__all__ = [
    "NoReclaim",
    "Readers",
    "Reclaim",
    "Reclaimed",
    "RowReclaim",
    "SegmentReclaim",
    "reclaim_for",
]


class Readers(Protocol):
    """Who reads the log by position: compaction waits for reads begun before a move."""

    def reads_begun(self) -> int: ...

    async def wait_before(self, mark: int) -> None: ...


@runtime_checkable
class Prunable(Protocol):
    """A store that deletes what runs ended before a time left (``postgres_retention``)."""

    def prune_expired(self, ended_before: float) -> Any: ...


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """What the disk half of one pass did."""

    segments_rewritten: int = 0
    segments_deleted: int = 0
    records_dropped: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    sealed: bool = False  # the active segment was sealed first
    pruned: Any = None  # the PostgreSQL store's report, when it pruned


class Reclaim(Protocol):
    """Gives back the disk space of runs that left the state."""

    async def reclaim(self, ended_before: float, *, background: bool, seal: bool) -> Reclaimed:
        """Drop from disk what runs that ended before ``ended_before`` left. ``background``:
        paced, and only where enough would go; ``seal``: include the segment being written."""
        ...

    def size(self) -> int | None:
        """The log's size in bytes, where the store has one."""
        ...

    def close(self) -> None:
        """At shutdown, with no reader left: finish what a pass left for later."""
        ...


class NoReclaim:
    async def reclaim(self, ended_before: float, *, background: bool, seal: bool) -> Reclaimed:
        return Reclaimed()

    def size(self) -> int | None:
        return None

    def close(self) -> None:
        pass


class RowReclaim:
    def __init__(self, store: Prunable) -> None:
        self.store = store

    async def reclaim(self, ended_before: float, *, background: bool, seal: bool) -> Reclaimed:
        if not math.isfinite(ended_before):  # runs are kept forever
            return Reclaimed()
        pruned = await anyio.to_thread.run_sync(self.store.prune_expired, ended_before)
        return Reclaimed(pruned=pruned)

    def size(self) -> int | None:
        return None

    def close(self) -> None:
        pass


class SegmentReclaim:
    """Rewrites the file log's sealed segments without the records of runs that are gone."""

    def __init__(
        self,
        log: FileLog,
        state: State,
        readers: Readers,
        *,
        share: float = 0.25,
        min_garbage: float = 0.25,
    ) -> None:
        self.log = log
        self.state = state
        self.readers = readers
        #: Share of one core (and of the disk's time) a background pass may take.
        self.share = share
        #: A background pass rewrites a segment only when this share of its bytes would go.
        self.min_garbage = min_garbage
        #: Called with the name of each compaction step (the crash tests stop there).
        self.crash_point: CrashPoint | None = None
        #: Generations the last pass replaced: unlinked at the next pass (or at close), so
        #: that a reader that took old positions just before a move still finds its records.
        self._replaced: list[int] = []

    def size(self) -> int | None:
        return sum(end for _, end in self.log.segment_ends())

    async def reclaim(self, ended_before: float, *, background: bool, seal: bool) -> Reclaimed:
        log = self.log
        before = self.size() or 0
        deleted = await self._retire()
        if seal:
            await anyio.to_thread.run_sync(log.seal_active)
        rewrites = await self._rewrite(background)
        self._replaced = [r.old for r in rewrites]
        return Reclaimed(
            segments_rewritten=len(rewrites),
            segments_deleted=deleted,
            records_dropped=sum(r.records_dropped for r in rewrites),
            bytes_before=before,
            bytes_after=self.size() or 0,
            sealed=seal,
        )

    async def _rewrite(self, background: bool) -> list[Rewrite]:
        log = self.log
        runs = self.state.runs

        def keep(run_id: str) -> bool:
            # Read from the worker thread; a dict lookup needs no lock. A run can only be
            # removed meanwhile (never added to a sealed segment), which keeps more, not less.
            return run_id in runs

        pace = Pacer(self.share) if background else None
        min_garbage = self.min_garbage if background else 0.0
        done: list[Rewrite] = []
        for number, _ in log.segment_ends():
            if number == log.active_segment:
                break
            rewrite = await anyio.to_thread.run_sync(
                lambda n=number: compaction.rewrite_segment(  # type: ignore[misc]
                    log, n, keep, min_garbage=min_garbage, pace=pace, crash=self.crash_point
                )
            )
            if rewrite is not None:
                self._move(rewrite)
                done.append(rewrite)
        return done

    def _move(self, rewrite: Rewrite) -> None:
        """Point the kept runs at their records' new places (on the loop, in one step)."""
        moves = rewrite.moves
        runs = self.state.runs
        for run_id in rewrite.kept_runs:
            run = runs.get(run_id)
            if run is None:
                continue
            # A new sequence object: a reader that took the old one keeps valid old positions.
            positions = run.positions
            moved = [moves.get(p, p) for p in positions]
            run.positions = moved if isinstance(positions, list) else array("q", moved)
            terminal = run.terminal
            if terminal is not None and terminal.position in moves:
                terminal.position = moves[terminal.position]
        for run_id in rewrite.kept_runs:
            streams = self.state.streams.runs.get(run_id)
            for log in streams.streams.values() if streams is not None else ():
                log.positions = array("q", [moves.get(p, p) for p in log.positions])

    async def _retire(self) -> int:
        """Unlink what the previous pass replaced, once the reads begun before it have ended;
        then delete the emptied segments at the head of the log."""
        replaced, self._replaced = self._replaced, []
        await self.readers.wait_before(self.readers.reads_begun())
        crash = self.crash_point
        log = self.log

        def work() -> int:
            compaction.retire(log, replaced, crash)
            return compaction.drop_emptied_prefix(log, crash)

        return await anyio.to_thread.run_sync(work)

    def close(self) -> None:
        if self._replaced:
            compaction.retire(self.log, self._replaced)
            compaction.drop_emptied_prefix(self.log)
            self._replaced = []


def reclaim_for(store: EventStore, state: State, readers: Readers) -> Reclaim:
    """The disk half of retention for ``store`` (asked once, when the runtime opens)."""
    if isinstance(store, FileLog):
        return SegmentReclaim(store, state, readers)
    if isinstance(store, Prunable):
        return RowReclaim(store)
    return NoReclaim()
