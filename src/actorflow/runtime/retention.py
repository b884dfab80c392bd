"""Retention: a finished run leaves memory and disk ``retention`` seconds after it ends.

A pass has two halves:

- **memory**: ``State.expire`` drops the runs that ended before ``now - retention`` with their
  start keys, delivery keys and webhook responses; nothing of them stays resident;
- **disk**: what the store's ``Reclaim`` does (``reclaim.py``, chosen once at open): on the
  file log, sealed segments are rewritten without the records of runs that are gone; on
  PostgreSQL the store deletes the expired runs' rows in bounded batches.

Passes run in the background when the oldest finished run's retention runs out (no timer while
nothing has ended), paced to a share of one core, and on demand (``Runtime.compact()``, which is
not paced and rewrites any segment with something to drop).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from .reclaim import NoReclaim, Reclaim
from .state import State

__all__ = ["CompactionReport", "Retention", "RetentionStatus"]

logger = logging.getLogger("actorflow.retention")


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
        *,
        min_interval: float = 60.0,
    ) -> None:
        self.seconds = seconds
        self.state = state
        self.clock = clock
        #: Seconds between background passes, at least: expiries are batched.
        self.min_interval = min_interval
        #: The disk half, set when the store is open (``reclaim.reclaim_for``).
        self.reclaim: Reclaim = NoReclaim()
        self.last_pass: CompactionReport | None = None
        self._lock = anyio.Lock()
        self._wake = anyio.Event()
        self._next_pass = -math.inf  # no background pass before this time (rate limit)
        #: No pass can come due before this time (see ``noticed_end``).
        self._quiet_until = -math.inf
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
        """Expire what is due, then drop expired runs' records from disk (see the module)."""
        async with self._lock:
            started, wall = time.monotonic(), self.clock()
            expired = self.expire()
            # On demand, the segment being appended to goes too: sealed first, but only when
            # runs expired since the last seal, or each call would add a segment.
            done = await self.reclaim.reclaim(
                wall - self.seconds,
                background=background,
                seal=not background and self._unsealed > 0,
            )
            if done.sealed:
                self._unsealed = 0
            report = CompactionReport(
                started_at=wall,
                seconds=time.monotonic() - started,
                runs_expired=expired,
                segments_rewritten=done.segments_rewritten,
                segments_deleted=done.segments_deleted,
                records_dropped=done.records_dropped,
                bytes_before=done.bytes_before,
                bytes_after=done.bytes_after,
                pruned=done.pruned,
            )
            self.last_pass = report
            self._next_pass = self.clock() + self.min_interval
            if expired or done.segments_rewritten:
                logger.info("retention: %d runs expired, %d segments rewritten (%d deleted), "
                            "%d records dropped, log %d -> %d bytes in %.3f s",
                            expired, done.segments_rewritten, done.segments_deleted,
                            report.records_dropped, report.bytes_before, report.bytes_after,
                            report.seconds)  # fmt: skip
            return report

    def close(self) -> None:
        """At shutdown (no reader left): finish what the last pass left for later."""
        self.reclaim.close()

    # -- status -------------------------------------------------------------------------------

    def status(self) -> RetentionStatus:
        runs = self.state.runs
        retained = len(self.state.ended)
        return RetentionStatus(
            retention=self.seconds,
            live_runs=len(runs) - retained,
            retained_runs=retained,
            expired_runs=self.state.expired,
            log_bytes=self.reclaim.size(),
            last_pass=self.last_pass,
        )
