"""The runtime's clock: wall-clock seconds that advance with the event loop's clock.

Tests run the event loop on virtual time (trio's ``autojump_clock``); reading time through this
clock makes a seven-day sleep take milliseconds there, and real seconds in production.
"""

from __future__ import annotations

import time

import anyio

__all__ = ["Clock"]


class Clock:
    """Wall-clock seconds, anchored once the event loop runs (``start``)."""

    __slots__ = ("_mono0", "_wall0", "offset", "_pinned")

    def __init__(self, offset: float = 0.0) -> None:
        self._mono0 = 0.0
        self._wall0 = time.time()
        #: Seconds added to every reading (tests start a "later" process with it).
        self.offset = offset
        self._pinned = False

    def pin(self, base: float) -> None:
        """Read ``base`` plus the event loop's own clock, across restarts (virtual-time tests
        whose runtimes share one mock clock)."""
        self._wall0 = base
        self._mono0 = 0.0
        self._pinned = True

    def start(self) -> None:
        """Anchor to the running event loop's clock (call inside the loop)."""
        if self._pinned:
            return
        self._mono0 = anyio.current_time()
        self._wall0 = time.time()

    def __call__(self) -> float:
        return self._wall0 + (anyio.current_time() - self._mono0) + self.offset
