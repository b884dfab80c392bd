"""Space reserved ahead of a segment's records, and how a reader tells it from a torn write.

The segment appends go to is extended with ``posix_fallocate`` ahead of its records, to a
multiple of ``RESERVE_ALIGN`` bytes, and records are written into that space at the log's own
offset. An fsync after a write that leaves the file's size alone has no size change to journal;
on ext4 it costs about 30% less than one after an append (``benchmarks/README.md``).
Reserved space reads as zeros, which never parse as a record (the CRC of a zero length field is
not zero), so a tail of zeros reaching a multiple of ``RESERVE_ALIGN`` is reserved space, while
one ending anywhere else is what a filesystem leaves of a torn append.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["RESERVE_ALIGN", "Reserve", "is_reserved", "torn_bytes"]

logger = logging.getLogger("actorflow.log")

#: Reserved space ends at a multiple of this, which is how a reader tells it from a torn tail.
RESERVE_ALIGN = 1 << 16
#: How far ahead of its records a segment is reserved, at most (a smaller segment, less).
_AHEAD = 1 << 20
_fallocate: Callable[[int, int, int], None] | None = getattr(os, "posix_fallocate", None)


class Reserve:
    """The length on disk of the segment appends go to, kept ahead of its records."""

    __slots__ = ("_ahead", "_directory", "_full", "enabled", "file_size")

    def __init__(self, directory: Path, segment_bytes: int, enabled: bool) -> None:
        self._directory = directory
        self._ahead = min(_AHEAD, segment_bytes)
        self.enabled = enabled and _fallocate is not None
        self._full = False  # reserving stopped for a full disk: tried again at the next segment
        #: The file's length: the end of its last record, or more while space is reserved.
        self.file_size = 0

    def ensure(self, fd: int, end: int) -> None:
        """Make the file at least ``end`` bytes long, reserving ahead if enabled.

        A filesystem that cannot allocate ahead turns reserving off for this log, a full disk
        until the next segment: appends then extend the file as they go, and the write itself
        reports a disk that is still full.
        """
        if end <= self.file_size:
            return
        if self.enabled and _fallocate is not None:
            target = -(-(end + self._ahead) // RESERVE_ALIGN) * RESERVE_ALIGN
            try:
                _fallocate(fd, self.file_size, target - self.file_size)
            except OSError as exc:
                self.enabled = False
                self._full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                until = "until the next segment" if self._full else "from now on"
                logger.warning("event log %s: cannot reserve space ahead of the records (%s); "
                               "appending without it %s", self._directory, exc, until)  # fmt: skip
                # A refusal may still have grown the file: a close cuts what it added.
                self.file_size = max(self.file_size, os.fstat(fd).st_size)
            else:
                self.file_size = target
                return
        self.file_size = max(self.file_size, end)  # the write about to happen extends the file

    def new_segment(self, fd: int, header: int) -> None:
        """A segment was just created holding ``header`` bytes: reserve the space its first
        records go to (a disk that was full may have room again)."""
        self.file_size = header
        if self._full:
            self._full, self.enabled = False, True
        if self.enabled:
            self.ensure(fd, header + 1)

    def cut(self, fd: int, end: int) -> None:
        """Give back the space reserved after ``end``: the file ends at its last record again."""
        if self.file_size > end:
            os.ftruncate(fd, end)
            self.file_size = end

    def give_back(self, fd: int, end: int) -> None:
        """``cut`` at a close: a failure only leaves zeros, which are read as reserved space."""
        try:
            self.cut(fd, end)
        except OSError as exc:
            logger.warning("event log %s: cannot give back the space reserved after its records: "
                           "%s", self._directory, exc)  # fmt: skip


def is_reserved(data: bytes, offset: int) -> bool:
    """Whether the bytes from ``offset`` are space a writer reserved: zeros up to an aligned end."""
    end = len(data)
    return end > offset and end % RESERVE_ALIGN == 0 and data.count(0, offset) == end - offset


def torn_bytes(data: bytes, offset: int) -> int:
    """How many bytes from ``offset`` a torn write left, not counting reserved space after them."""
    if len(data) % RESERVE_ALIGN == 0:
        return max(len(data.rstrip(b"\0")) - offset, 0)
    return len(data) - offset
