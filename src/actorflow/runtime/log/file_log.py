"""The embedded event store: a directory of append-only, checksummed segment files.

Layout of a directory::

    00000000000000000001.log    segment 1 (full, sealed)
    00000000000000000002.log    segment 2 (the one appends go to)
    LOCK                        held with flock by the one FileLog that has the directory open

A segment starts with an 8-byte header, ``b"AFLOG\\x00"`` and the format version (u16, little
endian), followed by frames::

    u32 crc | u32 length | payload (length bytes)

all little endian, where ``crc`` is zlib's CRC-32 of the length field and the payload together.
The checksum covers the length so that a damaged length is caught, and so that zero-filled bytes
(what some filesystems leave after a crash) never parse as an empty record: the CRC of four zero
bytes is not zero. A full segment ends with a seal, a frame whose length is ``0xFFFFFFFF``, so a
segment cut short exactly at a frame boundary is still noticed. A record's position is
``(segment number << 40) | offset of its frame``.

Compaction (``compact_segment``) rewrites a sealed segment without the records of expired runs,
copying the kept frames byte for byte into a new *generation* of the same segment,
``00000000000000000001.0001.log``: a segment number is ``sequence << 12 | generation``, so a
rewritten record gets a new position that never collides with its old one, and the old file can
stay readable until no reader holds an old position (``retire``). The new generation is written
to a ``.tmp`` file, fsynced, then renamed into place and the directory fsynced; an open keeps
the highest generation of each sequence and deletes the others and any ``.tmp`` file, so a crash
at any point leaves either the old file or the complete new one. Sequences are contiguous; a
leading run of segments emptied by compaction is deleted, and the first segment left is then a
rewritten one (a lost original first segment is still detected).

Only the end of the last segment can be torn by a crash: such a tail (bad frames with nothing
valid after them) is truncated at open, logged and reported. Damage anywhere else is corruption
and stops the open, because the records after it were acknowledged and must not vanish silently.

With ``durability="fsync"`` the segment appends go to is reserved ahead of its records
(``reserve.py``: an fsync then has no size change to journal). A tail of zeros that reaches a
multiple of ``RESERVE_ALIGN`` is that space, not a torn write, and is neither reported nor
truncated; a clean close and the seal of a full segment give it back, so a log at rest holds
records only.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import re
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, overload

from actorflow.errors import LogCorruptedError, LogFormatError, LogWriteError, StorageError
from actorflow.runtime.log.reserve import Reserve, is_reserved, torn_bytes
from actorflow.runtime.log.store import Durability, Position, ScanReport

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_RECORD_BYTES",
    "FileLog",
    "LogProblem",
    "verify_log",
]

logger = logging.getLogger("actorflow.log")

#: The first bytes of every segment file.
MAGIC = b"AFLOG\x00"
#: The segment format this code writes and reads.
FORMAT_VERSION = 1
_HEADER = struct.Struct("<6sH")
_HEADER_BYTES = _HEADER.size
_SEGMENT_HEADER = _HEADER.pack(MAGIC, FORMAT_VERSION)

_FRAME = struct.Struct("<II")
_FRAME_BYTES = _FRAME.size
_LENGTH = struct.Struct("<I")
#: The largest record accepted; a longer length field in a file is damage, not data.
MAX_RECORD_BYTES = 1 << 30
_SEAL_LENGTH = 0xFFFFFFFF
_SEAL_CRC = zlib.crc32(_LENGTH.pack(_SEAL_LENGTH))
_SEAL = _FRAME.pack(_SEAL_CRC, _SEAL_LENGTH)

_OFFSET_BITS = 40
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1
_MAX_SEGMENT_BYTES = 1 << 32
_SEGMENT_NAME = re.compile(r"^(\d{20})(?:\.(\d{4}))?\.log$")
_GENERATION_BITS = 12
_GENERATION_MASK = (1 << _GENERATION_BITS) - 1
_TMP_SUFFIX = ".tmp"
_LOCK_NAME = "LOCK"
# One pread fetches the frame header and, for most records, the whole payload.
_READ_AHEAD = 4096
_MAX_READ_FDS = 32


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(method: _F) -> _F:
    """Run under the log's mutex: appends and syncs (the writer's thread) against a seal."""

    @functools.wraps(method)
    def locked(self: FileLog, *args: Any, **kwargs: Any) -> Any:
        with self._mutex:
            return method(self, *args, **kwargs)

    return cast(_F, locked)


@dataclass(frozen=True, slots=True)
class LogProblem:
    """One problem ``verify_log`` found: where it is and what is wrong.

    ``kind`` is ``"torn_tail"`` for damage at the end of the last segment (the next open
    truncates it: records there were never completely written), ``"corrupted"`` for damage an
    open refuses, and ``"format"`` for a file that is not a segment of this format version.
    """

    path: str
    offset: int
    kind: Literal["torn_tail", "corrupted", "format"]
    detail: str

    def __str__(self) -> str:
        return f"{self.path} at offset {self.offset}: {self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class _Stop:
    """Where and why a walk over a segment's frames stopped."""

    offset: int
    kind: Literal["end", "seal", "bad"]
    detail: str = ""
    records: int = 0  # how many valid records the walk yielded before stopping


class FileLog:
    """An :class:`~actorflow.runtime.log.store.EventStore` in a directory of segment files.

    ``durability="none"`` never fsyncs (tests and benchmarks only); ``reserve=False`` appends
    without reserving space ahead. ``write`` and ``fsync`` are the only calls that put data on
    disk; they are parameters so that tests can inject disk faults (EIO, ENOSPC) at exactly that
    boundary. The constructor touches no file: ``scan()``
    opens (or creates) and locks the directory.

    Raises:
        ValueError: ``durability`` or ``segment_bytes`` is out of range.
    """

    #: Appends and syncs are local file calls: the loop may wait for small ones blocked, briefly.
    writes_locally = True

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        durability: Durability = "fsync",
        segment_bytes: int = 64 * 1024 * 1024,
        reserve: bool = True,
        write: Callable[[int, bytes], int] = os.write,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        if durability not in ("fsync", "none"):
            raise ValueError(f"durability must be 'fsync' or 'none', not {durability!r}")
        if not _HEADER_BYTES < segment_bytes <= _MAX_SEGMENT_BYTES:
            raise ValueError(
                f"segment_bytes must be between {_HEADER_BYTES + 1} and {_MAX_SEGMENT_BYTES}, "
                f"not {segment_bytes}"
            )
        self.directory = Path(directory)
        self.durability: Durability = durability
        self.segment_bytes = segment_bytes
        self._write = write
        self._fsync = fsync
        self._lock_fd: int | None = None
        self._fd: int | None = None  # fd of the segment appends go to, at the offset of _size
        self._segment = 0  # its number
        self._size = 0  # the end of its last record: where the next frame goes
        self._reserve = Reserve(self.directory, segment_bytes, reserve and durability == "fsync")
        self._dirty = False  # appended since the last fsync
        self._ends: dict[int, int] = {}  # segment number -> end of its last record
        self._reader = _SegmentReader(self.directory, self._ends)
        self._scan_started = False
        self._report: ScanReport | None = None
        self._failure: OSError | None = None
        self._closed = False
        self._mutex = threading.Lock()  # compaction seals the active segment from its thread

    @property
    def size_bytes(self) -> int:
        """Bytes the segments hold up to their last record (for metrics; any thread may ask:
        it sums a copy, as the writer's thread may add a segment meanwhile)."""
        return sum(list(self._ends.values()))

    # -- reading at open -------------------------------------------------------------------

    def scan(self) -> Iterator[tuple[Position, bytes]]:
        """Yield every record in log order, verifying each; truncate a torn tail.

        Creates the directory when it is missing. Runs once per ``FileLog``.

        Raises:
            LogCorruptedError: a damaged record is followed by valid ones, a non-last segment is
                damaged or cut short, or a segment is missing.
            LogFormatError: a segment has another magic or format version.
            LogWriteError: truncating a torn tail failed.
            StorageError: the directory cannot be opened or read, or another process has it open.
        """
        if self._closed:
            raise RuntimeError("this FileLog is closed")
        if self._scan_started:
            raise RuntimeError("scan() runs once per FileLog; open a new FileLog to scan again")
        self._scan_started = True
        return self._scan_or_release()

    @property
    def last_scan(self) -> ScanReport | None:
        """The report of the finished ``scan()``, or ``None`` before it finished."""
        return self._report

    def _scan_or_release(self) -> Generator[tuple[Position, bytes], None, None]:
        # A scan that raises or is abandoned leaves a store nobody can append to: let the
        # directory go at once rather than at close().
        try:
            yield from self._scan()
        except BaseException:
            self._release_files()
            raise

    def _scan(self) -> Generator[tuple[Position, bytes], None, None]:
        self._open_directory()
        segments, superseded = _list_segments(self.directory, with_superseded=True)
        _check_numbering(self.directory, segments)
        if _remove_leftovers(self.directory, superseded):
            self.sync_directory()
        count = 0
        torn: tuple[str, int, int] | None = None
        sealed = False
        for index, (number, path) in enumerate(segments):
            last = index == len(segments) - 1
            data = _read_segment(path)
            if last and not data:
                self._ends[number] = 0  # created just before a crash; gets its header below
                continue
            problem = _check_header(path, data)
            if problem is not None:
                if last and _is_torn_header(data):
                    torn = self._truncate(path, 0, len(data), "incomplete segment header")
                    self._ends[number] = 0
                    continue
                if problem.kind == "corrupted":
                    raise LogCorruptedError(problem.path, problem.offset, problem.detail)
                raise LogFormatError(problem.detail)
            stop = yield from _frames(data, number << _OFFSET_BITS, _HEADER_BYTES)
            count += stop.records
            self._ends[number] = stop.offset
            if stop.kind == "seal":
                after_seal = stop.offset + _FRAME_BYTES
                if after_seal != len(data) and not is_reserved(data, after_seal):
                    raise LogCorruptedError(
                        str(path), stop.offset + _FRAME_BYTES, "bytes follow the segment's seal"
                    )
                sealed = last
            elif not last:
                damaged = stop.kind == "bad" and not is_reserved(data, stop.offset)
                detail = stop.detail if damaged else "segment ends without its seal"
                raise LogCorruptedError(
                    str(path), stop.offset, f"{detail}; a non-last segment was cut short or damaged"
                )
            elif stop.kind == "bad" and not is_reserved(data, stop.offset):
                after = _next_valid_frame(data, stop.offset)
                if after is not None:
                    raise LogCorruptedError(
                        str(path), stop.offset, f"{stop.detail}; a valid record follows at {after}"
                    )
                torn = self._truncate(path, stop.offset, torn_bytes(data, stop.offset), stop.detail)
        self._open_for_append(segments, sealed)
        self._report = ScanReport(
            records=count,
            torn_tail_path=torn[0] if torn else None,
            torn_tail_offset=torn[1] if torn else None,
            torn_tail_bytes=torn[2] if torn else 0,
        )

    def _open_directory(self) -> None:
        try:
            if not self.directory.is_dir():
                self.directory.mkdir(parents=True, exist_ok=True)
                if self.durability == "fsync":
                    self._fsync_directory(self.directory.parent)
            fd = os.open(self.directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(
                f"cannot open the event log directory {self.directory}: {exc}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StorageError(
                    f"the event log {self.directory} is already open (in this or another "
                    "process); stop the other runtime, or give this one its own data directory"
                ) from exc
            raise StorageError(f"cannot lock the event log {self.directory}: {exc}") from exc
        self._lock_fd = fd

    def _truncate(self, path: Path, offset: int, dropped: int, detail: str) -> tuple[str, int, int]:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, offset)
                if self.durability == "fsync":
                    self._fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self._failure = exc
            raise LogWriteError(
                f"cannot truncate the torn tail of {path} at offset {offset}: {exc}"
            ) from exc
        logger.warning("event log %s: torn tail at offset %d (%s): truncated, %d bytes dropped; "
                       "the last write before a crash was incomplete",
                       path, offset, detail, dropped)  # fmt: skip
        return str(path), offset, dropped

    def _open_for_append(self, segments: list[tuple[int, Path]], sealed: bool) -> None:
        try:
            if not segments or sealed:
                number = _next_sequence(segments[-1][0]) if segments else 1 << _GENERATION_BITS
                self._create_segment(number)
                return
            number, path = segments[-1]
            self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            self._segment = number
            self._size = self._ends[number]
            # Records go on where the last one ends, over any space reserved after it.
            os.lseek(self._fd, self._size, os.SEEK_SET)
            self._reserve.file_size = os.fstat(self._fd).st_size
            if self._size == 0:
                # Created just before a crash: its header (and directory entry) may be missing.
                self._write_all(_SEGMENT_HEADER)
                self._size = _HEADER_BYTES
                self._ends[number] = _HEADER_BYTES
                if self.durability == "fsync":
                    self._fsync(self._fd)
                    self._fsync_directory(self.directory)
        except OSError as exc:
            raise self._fail("opening the last segment for appends", exc) from exc

    # -- writing ---------------------------------------------------------------------------

    @_locked
    def append(self, records: Sequence[bytes]) -> list[Position]:
        """Write records after the last one with one write call, without syncing.

        Raises:
            LogWriteError: the write failed, now or earlier; the store accepts nothing more.
            ValueError: a record is longer than ``MAX_RECORD_BYTES`` (nothing was written).
        """
        self._check_writable()
        if not records:
            return []
        if self._size >= self.segment_bytes:
            try:
                self._roll()
            except OSError as exc:
                raise self._fail("rolling to a new segment", exc) from exc
        base = self._segment << _OFFSET_BITS
        offset = self._size
        positions: list[Position] = []
        parts: list[bytes] = []
        crc32 = zlib.crc32
        pack_length = _LENGTH.pack
        pack_frame = _FRAME.pack
        for record in records:
            length = len(record)
            if length > MAX_RECORD_BYTES:
                raise ValueError(f"a record of {length} bytes exceeds {MAX_RECORD_BYTES} bytes")
            parts.append(pack_frame(crc32(record, crc32(pack_length(length))), length))
            parts.append(record)
            positions.append(base | offset)
            offset += _FRAME_BYTES + length
        if offset > _OFFSET_MASK:
            raise ValueError("this batch is too large for one segment; append it in parts")
        assert self._fd is not None
        try:
            self._reserve.ensure(self._fd, offset)
            self._write_all(b"".join(parts))
        except OSError as exc:
            raise self._fail("write", exc) from exc
        self._size = offset
        self._ends[self._segment] = offset
        self._dirty = True
        return positions

    @_locked
    def sync(self) -> None:
        """Make every appended record durable with fsync; a no-op for ``durability="none"``.

        Raises:
            LogWriteError: fsync failed, now or earlier. The store is then failed for good: a
                failed fsync is never retried as if the data were safe.
        """
        self._check_failure()
        if self.durability == "none" or not self._dirty or self._fd is None:
            return
        try:
            self._fsync(self._fd)
        except OSError as exc:
            raise self._fail("fsync", exc) from exc
        self._dirty = False

    def _roll(self) -> None:
        """Seal the full segment, make it durable, then start the next one."""
        assert self._fd is not None
        # Before the seal, which must be the last bytes of a full segment.
        self._reserve.cut(self._fd, self._size)
        self._write_all(_SEAL)
        if self.durability == "fsync":
            # Records of the old segment may not be synced yet, and sync() only sees the new one.
            self._fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        self._dirty = False
        self._create_segment(_next_sequence(self._segment))

    def _create_segment(self, number: int) -> None:
        path = self.directory / _segment_name(number)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC)
        self._segment = number
        self._size = 0
        self._write_all(_SEGMENT_HEADER)
        self._size = _HEADER_BYTES
        self._ends[number] = _HEADER_BYTES
        self._reserve.new_segment(self._fd, _HEADER_BYTES)  # synced with the header
        if self.durability == "fsync":
            self._fsync(self._fd)
            self._fsync_directory(self.directory)

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        written = self._write(self._fd, data)
        while written < len(data):
            # Regular files write short only near a full disk; the next call reports why.
            step = self._write(self._fd, data[written:])
            if step <= 0:
                raise OSError(errno.EIO, "write made no progress")
            written += step

    def _fsync_directory(self, directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def _fail(self, what: str, exc: OSError) -> LogWriteError:
        self._failure = exc
        return LogWriteError(
            f"event log {what} failed in {self.directory}: {exc}; the log accepts nothing more "
            "(records not yet synced may be lost): fix the disk and restart the runtime"
        )

    def _check_failure(self) -> None:
        if self._failure is not None:
            raise LogWriteError(
                f"the event log in {self.directory} failed earlier ({self._failure}) and accepts "
                "nothing more: fix the disk and restart the runtime"
            ) from self._failure

    def _check_writable(self) -> None:
        self._check_failure()
        if self._closed:
            raise RuntimeError("this FileLog is closed")
        if self._report is None:
            raise RuntimeError("exhaust scan() before the first append()")

    # -- reading records -------------------------------------------------------------------

    def read(self, positions: Sequence[Position]) -> list[bytes]:
        """Return the records at these positions (ones scanned or appended), verifying each.

        Raises:
            LogCorruptedError: a record no longer matches its checksum.
            StorageError: a segment cannot be read.
            ValueError: no record was scanned or appended at a position.
        """
        if self._closed:
            raise RuntimeError("this FileLog is closed")
        return self._reader.read(positions)

    # -- compaction (see compaction.py) ------------------------------------------------------

    @property
    def active_segment(self) -> int:
        """The number of the segment appends go to (never compacted)."""
        return self._segment

    @_locked
    def seal_active(self) -> None:
        """Seal the segment appends go to, if it holds records, so that it can be compacted."""
        self._check_writable()
        if self._size > _HEADER_BYTES:
            try:
                self._roll()
            except OSError as exc:
                raise self._fail("rolling to a new segment", exc) from exc

    def segment_ends(self) -> list[tuple[int, int]]:
        """``(number, end of its last record)`` of every segment, in log order."""
        return sorted(self._ends.items())

    def adopt(self, number: int, end: int) -> None:
        """Make a segment compaction wrote readable (its predecessor stays until retired)."""
        self._ends[number] = end

    def forget_segment(self, number: int) -> None:
        """Stop reading a segment compaction replaced or emptied, before its file goes."""
        self._ends.pop(number, None)
        self._reader.close(number)

    def sync_directory(self) -> None:
        if self.durability == "fsync":
            self._fsync_directory(self.directory)

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Sync appended records (unless the store failed) and release the files.

        Raises:
            LogWriteError: the final fsync failed.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._failure is None:
                if self._fd is not None:
                    self._reserve.give_back(self._fd, self._size)
                self.sync()
        finally:
            self._release_files()

    def _release_files(self) -> None:
        self._reader.close_all()
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock_fd = None


class _SegmentReader:
    """Reads records by position, keeping a few segment files open (least recently used)."""

    def __init__(self, directory: Path, ends: dict[int, int]) -> None:
        self.directory = directory
        self._ends = ends  # the log's: segment number -> end of its last record
        self._fds: OrderedDict[int, int] = OrderedDict()

    def read(self, positions: Sequence[Position]) -> list[bytes]:
        out: list[bytes] = []
        for position in positions:
            number = position >> _OFFSET_BITS
            offset = position & _OFFSET_MASK
            end = self._ends.get(number)
            if end is None or offset < _HEADER_BYTES or offset + _FRAME_BYTES > end:
                raise ValueError(f"no record at position {position} ({number}:{offset})")
            path = self.directory / _segment_name(number)
            try:
                fd = self._fd(number)
                frame = os.pread(fd, _READ_AHEAD, offset)
                if len(frame) >= _FRAME_BYTES:
                    length = _FRAME.unpack_from(frame)[1]
                    if _FRAME_BYTES + length > len(frame) and offset + _FRAME_BYTES + length <= end:
                        frame += os.pread(
                            fd, _FRAME_BYTES + length - len(frame), offset + len(frame)
                        )
            except OSError as exc:
                raise StorageError(f"cannot read {path} at offset {offset}: {exc}") from exc
            stop = _check_frame(frame, 0)
            if stop is not None:
                raise LogCorruptedError(
                    str(path), offset, stop.detail or f"no record ({stop.kind})"
                )
            out.append(frame[_FRAME_BYTES : _FRAME_BYTES + _FRAME.unpack_from(frame)[1]])
        return out

    def _fd(self, number: int) -> int:
        fd = self._fds.get(number)
        if fd is not None:
            self._fds.move_to_end(number)
            return fd
        fd = os.open(self.directory / _segment_name(number), os.O_RDONLY | os.O_CLOEXEC)
        self._fds[number] = fd
        if len(self._fds) > _MAX_READ_FDS:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def close(self, number: int) -> None:
        fd = self._fds.pop(number, None)
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        for number in list(self._fds):
            self.close(number)


def verify_log(directory: str | os.PathLike[str]) -> list[LogProblem]:
    """Check every record of a log directory without changing anything; list what is wrong.

    Unlike an open, it does not stop at the first damaged record: it skips to the next valid
    frame and goes on, so the list shows every damaged region. An empty list means an open
    would find nothing to truncate or refuse.

    Raises:
        StorageError: the directory or a segment cannot be read.
    """
    root = Path(directory)
    if not root.exists():
        return []
    segments = _list_segments(root)
    problems: list[LogProblem] = []
    try:
        _check_numbering(root, segments)
    except LogCorruptedError as exc:
        problems.append(LogProblem(exc.path, exc.offset, "corrupted", str(exc)))
    for index, (_, path) in enumerate(segments):
        last = index == len(segments) - 1
        data = _read_segment(path)
        if last and not data:
            continue  # created just before a crash: an open gives it its header
        header_problem = _check_header(path, data)
        if header_problem is not None:
            if last and _is_torn_header(data):
                header_problem = LogProblem(
                    str(path), 0, "torn_tail", "incomplete segment header; an open truncates it"
                )
            problems.append(header_problem)
            continue
        problems.extend(_verify_segment(path, data, last))
    return problems


def _verify_segment(path: Path, data: bytes, last: bool) -> list[LogProblem]:
    problems: list[LogProblem] = []
    offset = _HEADER_BYTES
    while True:
        stop = _drain(_frames(data, 0, offset))
        if stop.kind == "end":
            if not last:
                problems.append(
                    LogProblem(str(path), stop.offset, "corrupted", "segment ends without its seal")
                )
            return problems
        if stop.kind == "seal":
            # A sealed last segment is fine: the crash came before the next one was created.
            after_seal = stop.offset + _FRAME_BYTES
            if after_seal != len(data) and not is_reserved(data, after_seal):
                problems.append(
                    LogProblem(
                        str(path), stop.offset + _FRAME_BYTES, "corrupted", "bytes follow the seal"
                    )
                )
            return problems
        if is_reserved(data, stop.offset):
            if not last:
                problems.append(
                    LogProblem(str(path), stop.offset, "corrupted", "segment ends without its seal")
                )
            return problems
        after = _next_valid_frame(data, stop.offset)
        if after is None:
            dropped = torn_bytes(data, stop.offset)
            if last:
                problems.append(
                    LogProblem(
                        str(path),
                        stop.offset,
                        "torn_tail",
                        f"{stop.detail}; an open truncates these {dropped} bytes",
                    )
                )
            else:
                problems.append(
                    LogProblem(
                        str(path),
                        stop.offset,
                        "corrupted",
                        f"{stop.detail}; the last {dropped} bytes of a non-last segment are bad",
                    )
                )
            return problems
        problems.append(
            LogProblem(
                str(path),
                stop.offset,
                "corrupted",
                f"{stop.detail}; {after - stop.offset} bytes skipped to the next valid record",
            )
        )
        offset = after


# -- the segment format ---------------------------------------------------------------------


def _remove_leftovers(directory: Path, paths: list[Path]) -> bool:
    """Delete what a crash left of a compaction: replaced generations and ``.tmp`` files."""
    for path in paths:
        logger.info("event log %s: removing %s, left by an interrupted compaction",
                    directory, path.name)  # fmt: skip
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot remove {path}: {exc}") from exc
    return bool(paths)


def _segment_name(number: int) -> str:
    sequence, generation = number >> _GENERATION_BITS, number & _GENERATION_MASK
    if generation == 0:
        return f"{sequence:020d}.log"
    return f"{sequence:020d}.{generation:04d}.log"


def _next_sequence(number: int) -> int:
    return ((number >> _GENERATION_BITS) + 1) << _GENERATION_BITS


@overload
def _list_segments(directory: Path) -> list[tuple[int, Path]]: ...


@overload
def _list_segments(
    directory: Path, *, with_superseded: Literal[True]
) -> tuple[list[tuple[int, Path]], list[Path]]: ...


def _list_segments(
    directory: Path, *, with_superseded: bool = False
) -> list[tuple[int, Path]] | tuple[list[tuple[int, Path]], list[Path]]:
    """The segments in log order (the newest generation of each), and what an open deletes."""
    try:
        names = os.listdir(directory)
    except OSError as exc:
        raise StorageError(f"cannot list the event log directory {directory}: {exc}") from exc
    newest: dict[int, tuple[int, Path]] = {}
    leftovers: list[Path] = []
    for name in names:
        if name.endswith(_TMP_SUFFIX) and _SEGMENT_NAME.match(name[: -len(_TMP_SUFFIX)]):
            leftovers.append(directory / name)  # a rewrite a crash interrupted
            continue
        match = _SEGMENT_NAME.match(name)
        if match:
            sequence, generation = int(match.group(1)), int(match.group(2) or 0)
            number = sequence << _GENERATION_BITS | generation
            held = newest.get(sequence)
            if held is None or held[0] < number:
                if held is not None:
                    leftovers.append(held[1])
                newest[sequence] = (number, directory / name)
            else:
                leftovers.append(directory / name)
    found = sorted(newest.values())
    return (found, leftovers) if with_superseded else found


def _check_numbering(directory: Path, segments: list[tuple[int, Path]]) -> None:
    """Sequences are 1, 2, 3...: a gap is a lost file, not a fresh start.

    Compaction may delete a leading run of emptied segments; the first one left is then a
    rewritten generation, so an original first segment that is missing is still noticed.
    """
    if not segments:
        return
    first = segments[0][0]
    start = first >> _GENERATION_BITS
    if start != 1 and first & _GENERATION_MASK == 0:
        missing = directory / _segment_name((start - 1) << _GENERATION_BITS)
        raise LogCorruptedError(
            str(missing), 0, f"segment file is missing, but {_segment_name(first)} exists"
        )
    for expected, (number, _) in enumerate(segments, start=start):
        if number >> _GENERATION_BITS != expected:
            missing = directory / _segment_name(expected << _GENERATION_BITS)
            raise LogCorruptedError(
                str(missing), 0, f"segment file is missing, but {_segment_name(number)} exists"
            )


def _read_segment(path: Path) -> bytes:
    try:
        with open(path, "rb", buffering=0) as file:
            return file.read()
    except OSError as exc:
        raise StorageError(f"cannot read the event log segment {path}: {exc}") from exc


def _check_header(path: Path, data: bytes) -> LogProblem | None:
    if len(data) >= _HEADER_BYTES:
        magic, version = _HEADER.unpack_from(data)
        if magic != MAGIC:
            return LogProblem(
                str(path),
                0,
                "format",
                f"{path} is not an actorflow log segment: it starts with {data[:6]!r}, "
                f"not {MAGIC!r}; move it out of the log directory",
            )
        if version != FORMAT_VERSION:
            return LogProblem(
                str(path),
                6,
                "format",
                f"{path} has log format version {version}, but this actorflow reads version "
                f"{FORMAT_VERSION}; use the actorflow release that wrote it",
            )
        return None
    if _SEGMENT_HEADER.startswith(data):
        return LogProblem(
            str(path), len(data), "corrupted", "the segment is cut short in its header"
        )
    return LogProblem(
        str(path),
        0,
        "format",
        f"{path} is too short ({len(data)} bytes) to be an actorflow log segment",
    )


def _is_torn_header(data: bytes) -> bool:
    """A last segment whose creation a crash interrupted: empty, a header prefix, or zeros."""
    return (len(data) < _HEADER_BYTES and _SEGMENT_HEADER.startswith(data)) or (
        data.count(0) == len(data)
    )


def _frames(data: bytes, base: int, start: int) -> Generator[tuple[Position, bytes], None, _Stop]:
    """Yield ``(base | offset, payload)`` for each valid frame from ``start``; return the stop."""
    # The hot loop of an open: locals only, and one slice per record, which is the payload
    # yielded. The CRC of the length field seeds the payload's CRC; lengths repeat, so it is
    # cached.
    unpack = _FRAME.unpack_from
    crc32 = zlib.crc32
    seeds: dict[int, int] = {}
    end = len(data)
    offset = start
    limit = end - _FRAME_BYTES
    count = 0
    while offset <= limit:
        crc, length = unpack(data, offset)
        stop = offset + _FRAME_BYTES + length
        if stop > end:
            break
        seed = seeds.get(length)
        if seed is None:
            if length > MAX_RECORD_BYTES:
                break
            seed = seeds[length] = crc32(_LENGTH.pack(length))
        payload = data[offset + _FRAME_BYTES : stop]
        if crc32(payload, seed) != crc:
            break
        yield base | offset, payload
        offset = stop
        count += 1
    why = _check_frame(data, offset) or _Stop(offset, "end")
    return _Stop(why.offset, why.kind, why.detail, count)


def _check_frame(data: bytes, offset: int) -> _Stop | None:
    """Why the frame at ``offset`` is not a record (a seal, the end, damage), or None if it is."""
    end = len(data)
    if offset == end:
        return _Stop(offset, "end")
    if end - offset < _FRAME_BYTES:
        return _Stop(offset, "bad", f"incomplete frame header ({end - offset} of 8 bytes)")
    crc, length = _FRAME.unpack_from(data, offset)
    if length == _SEAL_LENGTH and crc == _SEAL_CRC:
        return _Stop(offset, "seal")
    if length > MAX_RECORD_BYTES:
        return _Stop(offset, "bad", f"impossible record length {length}")
    stop = offset + _FRAME_BYTES + length
    if stop > end:
        return _Stop(
            offset, "bad", f"record of {length} bytes runs past the end ({end - offset - 8} left)"
        )
    actual = zlib.crc32(memoryview(data)[offset + 4 : stop])
    if actual != crc:
        return _Stop(
            offset, "bad", f"checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
        )
    return None


def _next_valid_frame(data: bytes, bad: int) -> int | None:
    """The first offset after the bad frame at ``bad`` holding a valid frame or seal, if any."""
    end = len(data)
    if data.count(0, bad + 1) == end - bad - 1:
        return None  # zeros only: the usual look of a torn tail, and never a valid frame
    # A damaged payload byte leaves the length intact: try the frame it points to first.
    if end - bad >= _FRAME_BYTES:
        length: int = _FRAME.unpack_from(data, bad)[1]
        guess = bad + _FRAME_BYTES + length
        if length <= MAX_RECORD_BYTES and guess < end and _is_frame(data, guess):
            return guess
    for offset in range(bad + 1, end - _FRAME_BYTES + 1):
        if _is_frame(data, offset):
            return offset
    return None


def _is_frame(data: bytes, offset: int) -> bool:
    stop = _check_frame(data, offset)
    return stop is None or stop.kind == "seal"


def _drain(frames: Generator[tuple[Position, bytes], None, _Stop]) -> _Stop:
    while True:
        try:
            next(frames)
        except StopIteration as done:
            result: _Stop = done.value
            return result
