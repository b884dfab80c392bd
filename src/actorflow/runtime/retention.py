"""Retention: a finished run leaves memory and disk ``retention`` seconds after it ends.

A pass has two halves:

- **memory**: ``State.expire`` drops the runs that ended before ``now - retention`` with their
  start keys, delivery keys and webhook responses; nothing of them stays resident;
- **disk**: on the file log, every sealed segment holding records of runs that are no longer in
  the state is rewritten without them (``log/compaction.py``) and the kept records' new positions
  are applied here, on the event loop, in one step. The replaced files are unlinked once every
  read that might hold an old position has finished. On PostgreSQL the store deletes the expired
  runs' rows in bounded batches (``prune_expired``), when it has that method.

Passes run in the background when the oldest finished run's retention runs out (no timer while
nothing has ended), paced to a share of one core, and on demand (``Runtime.compact()``, which is
not paced and rewrites any segment with something to drop).
"""

from __future__ import annotations

import logging
import math
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread

from .log import compaction
from .log.compaction import CrashPoint, Pacer, Rewrite
from .log.file_log import FileLog
from .log.store import EventStore
from .state import State

__all__ = ["CompactionReport", "Retention", "RetentionStatus"]

logger = logging.getLogger("actorflow.retention")


class Readers(Protocol):
    """Who reads the log by position: compaction waits for reads begun before a move."""

    def reads_begun(self) -> int: ...

    async def wait_before(self, mark: int) -> None: ...


@dataclass(frozen=True, slots=True)
class CompactionReport:
    """What one retention pass did."""

    started_at: float  # wall-clock seconds
    seconds: float
    runs_expired: int
    segments_rewritten: int
    segments_deleted: int
    records_dropped: int
    bytes_before: int
    bytes_after: int
    pruned: Any = None  # the PostgreSQL store's report, when it pruned

    def to_json(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "seconds": round(self.seconds, 6),
            "runs_expired": self.runs_expired,
            "segments_rewritten": self.segments_rewritten,
            "segments_deleted": self.segments_deleted,
            "records_dropped": self.records_dropped,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
        }


@dataclass(frozen=True, slots=True)
class RetentionStatus:
    """For health checks: the retention window, what is kept, and the last pass."""

    retention: float
    live_runs: int
    retained_runs: int  # finished runs still readable
    expired_runs: int  # removed since start
    log_bytes: int | None  # the file log's size; None on other stores
    last_pass: CompactionReport | None

    def to_json(self) -> dict[str, Any]:
        return {
            "retention_seconds": self.retention,
            "live_runs": self.live_runs,
            "retained_runs": self.retained_runs,
            "expired_runs": self.expired_runs,
            "log_bytes": self.log_bytes,
            "last_compaction": None if self.last_pass is None else self.last_pass.to_json(),
        }


class Retention:
    """Expires finished runs and compacts the log; one pass at a time."""

    def __init__(
        self,
        seconds: float,
        state: State,
        clock: Callable[[], float],
        readers: Readers,
        *,
        share: float = 0.25,
        min_garbage: float = 0.25,
        min_interval: float = 60.0,
    ) -> None:
        self.seconds = seconds
        self.state = state
        self.clock = clock
        self.readers = readers
        #: Share of one core (and of the disk's time) a background pass may take.
        self.share = share
        #: A background pass rewrites a segment only when this share of its bytes would go.
        self.min_garbage = min_garbage
        #: Seconds between background passes, at least: expiries are batched.
        self.min_interval = min_interval
        self.store: EventStore | None = None
        self.last_pass: CompactionReport | None = None
        #: Called with the name of each compaction step (the crash tests stop there).
        self.crash_point: CrashPoint | None = None
        self._lock = anyio.Lock()
        self._wake = anyio.Event()
        self._next_pass = -math.inf  # no background pass before this time (rate limit)
        #: No pass can come due before this time (see ``noticed_end``).
        self._quiet_until = -math.inf
        #: Generations the last pass replaced: unlinked at the next pass (or at close), so
        #: that a reader that took old positions just before a move still finds its records.
        self._replaced: list[int] = []
        self._unsealed = 0  # runs expired since the active segment was last sealed

    # -- the background task ------------------------------------------------------------------

    def noticed_end(self) -> None:
        """A run ended: if the oldest finished run is past retention, a pass is due.

        Called at every run's end, so the answer "not before T" is kept: the oldest finished
        run only gives way to runs that ended later, and the rate limit only moves forward, so
        nothing is due before the later of its deadline and the rate limit.
        """
        if self.seconds == math.inf:
            return
        now = self.clock()
        if now < self._quiet_until:
            return
        deadline = self._next_deadline()
        if deadline is not None and deadline <= now and now >= self._next_pass:
            self._wake.set()
            return
        # No finished run at all: the next one ends now at the earliest.
        self._quiet_until = max(now + self.seconds if deadline is None else deadline,
                                self._next_pass)  # fmt: skip

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run a paced pass whenever one is due. Passes are triggered by runs ending, by a start
        that found expired runs, and by ``compact()``; never by a timer, so an idle runtime does
        no work (and a test's virtual clock has no far deadline to jump to). A finished run is
        therefore kept at least ``retention`` seconds, and removed at the first run end after
        that (or at the next start, or ``compact()``)."""
        task_status.started()
        if math.isinf(self.seconds):
            return
        if self.state.expired:
            self._wake.set()  # recovery expired runs: their records can go now
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self.compact(background=True)
            except Exception:
                logger.exception("a retention pass failed; the next one will try again")

    def _next_deadline(self) -> float | None:
        ended = self.state.ended
        while ended and self.state.runs.get(ended[0].run_id) is not ended[0]:
            ended.popleft()  # forgotten some other way
        if not ended:
            return None
        end = ended[0].ended_at
        return None if end is None else end + self.seconds

    # -- a pass -------------------------------------------------------------------------------

    def expire(self) -> int:
        """Drop the finished runs past retention from memory; how many went."""
        if math.isinf(self.seconds):
            return 0
        gone = len(self.state.expire(self.clock() - self.seconds))
        self._unsealed += gone
        return gone

    async def compact(self, *, background: bool = False) -> CompactionReport:
        """Expire what is due, then drop expired runs' records from the log (see the module)."""
        async with self._lock:
            started, wall = time.monotonic(), self.clock()
            expired = self.expire()
            store = self.store
            rewrites: list[Rewrite] = []
            deleted = 0
            before = after = _size(store)
            pruned = None
            if isinstance(store, FileLog):
                deleted = await self._retire(store)
                if not background and self._unsealed:
                    # On demand, the segment being appended to goes too: seal it first (only
                    # when runs expired since the last seal, or each call would add a segment).
                    await anyio.to_thread.run_sync(store.seal_active)
                    self._unsealed = 0
                rewrites = await self._rewrite(store, background)
                self._replaced = [r.old for r in rewrites]
                after = _size(store)
            elif (
                store is not None
                and hasattr(store, "prune_expired")
                and math.isfinite(self.seconds)
            ):
                pruned = await anyio.to_thread.run_sync(store.prune_expired, wall - self.seconds)
            report = CompactionReport(
                started_at=wall,
                seconds=time.monotonic() - started,
                runs_expired=expired,
                segments_rewritten=len(rewrites),
                segments_deleted=deleted,
                records_dropped=sum(r.records_dropped for r in rewrites),
                bytes_before=before or 0,
                bytes_after=after or 0,
                pruned=pruned,
            )
            self.last_pass = report
            self._next_pass = self.clock() + self.min_interval
            if expired or rewrites:
                logger.info("retention: %d runs expired, %d segments rewritten (%d deleted), "
                            "%d records dropped, log %d -> %d bytes in %.3f s",
                            expired, len(rewrites), deleted, report.records_dropped,
                            report.bytes_before, report.bytes_after, report.seconds)  # fmt: skip
            return report

    async def _rewrite(self, log: FileLog, background: bool) -> list[Rewrite]:
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

    async def _retire(self, log: FileLog) -> int:
        """Unlink what the previous pass replaced, once the reads begun before it have ended;
        then delete the emptied segments at the head of the log."""
        replaced, self._replaced = self._replaced, []
        await self.readers.wait_before(self.readers.reads_begun())
        crash = self.crash_point

        def work() -> int:
            compaction.retire(log, replaced, crash)
            return compaction.drop_emptied_prefix(log, crash)

        return await anyio.to_thread.run_sync(work)

    def close(self) -> None:
        """At shutdown (no reader left): unlink what the last pass replaced."""
        if isinstance(self.store, FileLog) and self._replaced:
            compaction.retire(self.store, self._replaced)
            compaction.drop_emptied_prefix(self.store)
            self._replaced = []

    # -- status -------------------------------------------------------------------------------

    def status(self) -> RetentionStatus:
        runs = self.state.runs
        retained = len(self.state.ended)
        return RetentionStatus(
            retention=self.seconds,
            live_runs=len(runs) - retained,
            retained_runs=retained,
            expired_runs=self.state.expired,
            log_bytes=_size(self.store),
            last_pass=self.last_pass,
        )


def _size(store: EventStore | None) -> int | None:
    if isinstance(store, FileLog):
        return sum(end for _, end in store.segment_ends())
    return None
