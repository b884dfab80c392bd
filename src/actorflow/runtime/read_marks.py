"""Marks of reads by log position in flight, so that compaction knows when old files can go.

A reader takes a run's positions on the event loop and reads them in a worker thread. After
compaction moves records, a read that began before the move may still use old positions: the
replaced file is unlinked only once every such read has ended.
"""

from __future__ import annotations

import anyio

__all__ = ["ReadMarks"]


class ReadMarks:
    """Numbers the reads; tells whether any read begun before a mark is still going."""

    __slots__ = ("_next", "_open", "_drained")

    def __init__(self) -> None:
        self._next = 0
        self._open: dict[int, None] = {}  # insertion-ordered: the oldest open read first
        self._drained: anyio.Event | None = None

    def begin(self) -> int:
        """Call on the event loop before taking the positions to read."""
        mark = self._next
        self._next += 1
        self._open[mark] = None
        return mark

    def end(self, mark: int) -> None:
        self._open.pop(mark, None)
        if self._drained is not None:
            self._drained.set()
            self._drained = None

    def reads_begun(self) -> int:
        return self._next

    def reading_before(self, mark: int) -> bool:
        return bool(self._open) and next(iter(self._open)) < mark

    async def wait_before(self, mark: int) -> None:
        """Return once every read begun before ``mark`` has ended."""
        while self.reading_before(mark):
            if self._drained is None:
                self._drained = anyio.Event()
            await self._drained.wait()
