"""The runtime's clock: wall-clock seconds that advance with the event loop's clock.

Tests run the event loop on virtual time (trio's ``autojump_clock``); reading time through this
clock makes a seven-day sleep take milliseconds there, and real seconds in production.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import sniffio

__all__ = ["Clock"]


def _loop_time() -> Callable[[], float]:
    """The running event loop's own clock, read without anyio's per-call backend lookup.

    ``anyio.current_time()`` finds the backend on every call (about 0.5 us, several times per
    resume); the function it ends up calling is fixed for the life of the loop, so it is taken
    once. Any other library gets anyio's generic path.
    """
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return anyio.current_time
    if library == "asyncio":
        import asyncio

        return asyncio.get_running_loop().time
    if library == "trio":
        import trio

        return trio.current_time
    return anyio.current_time


class Clock:
    """Wall-clock seconds, anchored once the event loop runs (``start``)."""

    __slots__ = ("_mono0", "_wall0", "offset", "_pinned", "_loop_time")

    def __init__(self, offset: float = 0.0) -> None:
        self._loop_time: Callable[[], float] = anyio.current_time
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
        self._loop_time = _loop_time()
        if self._pinned:
            return
        self._mono0 = self._loop_time()
        self._wall0 = time.time()

    def __call__(self) -> float:
        return self._wall0 + (self._loop_time() - self._mono0) + self.offset
