"""Durable timers: the one task that turns due waits into ``wait_completed`` events.

Timers live in the log (``wait_created``); this service only keeps a heap of deadlines. A timer
that came due while the process was down fires at once after recovery. Cancelled timers are left
in the heap and skipped when they surface (the state no longer lists them).
"""

from __future__ import annotations

import heapq
import logging
import math

import anyio
import anyio.abc

from ..errors import StorageError
from .core import events as ev
from .journal import Journal
from .state import State

__all__ = ["TimerService"]

logger = logging.getLogger("actorflow.runtime")


class TimerService:
    def __init__(self, journal: Journal, state: State) -> None:
        self._journal = journal
        self._state = state
        self._heap: list[tuple[float, str, str]] = []
        self._wake = anyio.Event()
        self._next = math.inf

    def add(self, wait_id: str, resume_at: float) -> None:
        """Arm a timer recorded in the state."""
        timer = self._state.timers.get(wait_id)
        run_id = timer.run_id if timer is not None else ""
        heapq.heappush(self._heap, (resume_at, wait_id, run_id))
        if resume_at < self._next:
            self._wake.set()

    @property
    def armed(self) -> int:
        return len(self._state.timers)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        journal = self._journal
        timers = self._state.timers
        heap = self._heap
        while True:
            now = journal.clock()
            while heap and heap[0][0] <= now:
                _, wait_id, _ = heapq.heappop(heap)
                timer = timers.get(wait_id)
                if timer is None:
                    continue  # cancelled, or its run ended
                try:
                    journal.record(journal.event(timer.run_id, ev.WAIT_COMPLETED, wait_id, {}))
                except StorageError as exc:
                    logger.error("timer %s could not fire: %s", wait_id, exc)
                    return
            self._next = heap[0][0] if heap else math.inf
            with anyio.move_on_after(self._next - now if heap else math.inf):
                await self._wake.wait()
            self._wake = anyio.Event()
