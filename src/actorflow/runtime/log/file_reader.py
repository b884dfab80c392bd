"""Reading a file log without opening it: no lock, nothing truncated, for inspection tools.

``FileLog`` takes the directory's lock and truncates a torn tail: right for the one runtime
that writes, wrong for ``actorflow runs list --data-dir`` next to a running server. These
functions only read. A record being written while they read is not yet valid (its checksum
fails), so they stop before it, as at a torn tail, and the next read sees it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from actorflow.errors import StorageError
from actorflow.runtime.log import file_log as fl
from actorflow.runtime.log.store import Position

__all__ = ["read_at", "read_log"]


def read_log(directory: Path) -> Iterator[tuple[Position, bytes]]:
    """Every valid record of a log directory in order, up to the first damaged frame.

    Raises:
        StorageError: a segment cannot be read.
    """
    for number, path in fl._list_segments(directory):
        data = fl._read_segment(path)
        if fl._check_header(path, data) is not None:
            return
        stop = yield from fl._frames(data, number << fl._OFFSET_BITS, fl._HEADER_BYTES)
        if stop.kind == "bad":
            return


def read_at(directory: Path, positions: Sequence[Position]) -> list[bytes]:
    """The records at ``positions`` (from :func:`read_log`), read straight from the segments.

    Raises:
        StorageError: a segment cannot be read, or a position holds no valid record.
    """
    out: list[bytes] = []
    files: dict[int, int] = {}
    try:
        for position in positions:
            number, offset = position >> fl._OFFSET_BITS, position & fl._OFFSET_MASK
            fd = files.get(number)
            if fd is None:
                fd = files[number] = os.open(directory / fl._segment_name(number), os.O_RDONLY)
            head = os.pread(fd, fl._FRAME_BYTES, offset)
            if len(head) != fl._FRAME_BYTES:
                raise StorageError(f"no record at position {position} in {directory}")
            _, length = fl._FRAME.unpack(head)
            payload = os.pread(fd, length, offset + fl._FRAME_BYTES)
            if len(payload) != length:
                raise StorageError(f"no record at position {position} in {directory}")
            out.append(payload)
    except OSError as exc:
        raise StorageError(f"cannot read the event log {directory}: {exc}") from exc
    finally:
        for fd in files.values():
            os.close(fd)
    return out
