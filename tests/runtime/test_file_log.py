"""The file log and the memory log: the conformance suite, then the file log's own faults.

Faults are made for real on files in ``tmp_path`` (truncating, flipping bytes, rewriting headers);
only disk errors (EIO, ENOSPC) come through the ``write``/``fsync`` seams, since a test cannot
make a real disk fail.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from collections.abc import Callable, Generator
from pathlib import Path

import pytest
from tests.conformance.event_log import EVENT_LOG_CHECKS, Opener, check_event_log

from actorflow.errors import LogCorruptedError, LogFormatError, LogWriteError, StorageError
from actorflow.runtime.log.file_log import FileLog, LogProblem, verify_log
from actorflow.runtime.log.memory_log import MemoryLog
from actorflow.runtime.log.store import EventStore, ScanReport

HEADER = 8
FRAME = 8
OFFSET_MASK = (1 << 40) - 1
SEGMENT_1 = "00000000000000000001.log"
SEGMENT_2 = "00000000000000000002.log"
SEGMENT_3 = "00000000000000000003.log"


def file_opener(directory: Path, **options: object) -> Opener:
    return lambda: FileLog(directory, durability="none", **options)  # type: ignore[arg-type]


# -- conformance ---------------------------------------------------------------------------


def _make_opener(backend: str, directory: Path) -> Opener:
    if backend == "memory":
        return MemoryLog().reopen
    if backend == "file-small-segments":
        return file_opener(directory, segment_bytes=4096)
    if backend == "file-fsync":
        return lambda: FileLog(directory)
    return file_opener(directory)


BACKENDS = ("memory", "file", "file-fsync", "file-small-segments")


@pytest.mark.parametrize("check", EVENT_LOG_CHECKS, ids=lambda check: check.__name__[6:])
@pytest.mark.parametrize("backend", BACKENDS)
def test_conformance(backend: str, check: Callable[[Opener], None], tmp_path: Path) -> None:
    check(_make_opener(backend, tmp_path / "log"))


def test_check_event_log_runs_every_check(tmp_path: Path) -> None:
    made: list[Path] = []

    def make_opener() -> Opener:
        made.append(tmp_path / f"log{len(made)}")
        return file_opener(made[-1])

    check_event_log(make_opener)
    assert len(made) == len(EVENT_LOG_CHECKS)


def test_check_event_log_names_the_failing_check() -> None:
    class Forgetful(MemoryLog):
        def reopen(self) -> MemoryLog:
            return MemoryLog()

    with pytest.raises(AssertionError, match="check_append_returns_increasing_positions"):
        check_event_log(lambda: Forgetful().reopen)


# -- helpers ---------------------------------------------------------------------------------


def write_log(directory: Path, batches: list[list[bytes]], **options: object) -> list[int]:
    log = FileLog(directory, durability="none", **options)  # type: ignore[arg-type]
    assert list(log.scan()) == []
    positions: list[int] = []
    for batch in batches:
        positions.extend(log.append(batch))
    log.close()
    return positions


def open_log(directory: Path, **options: object) -> tuple[FileLog, list[bytes], ScanReport]:
    log = FileLog(directory, durability="none", **options)  # type: ignore[arg-type]
    records = [record for _, record in log.scan()]
    assert log.last_scan is not None
    return log, records, log.last_scan


def reopen(directory: Path, **options: object) -> tuple[list[bytes], ScanReport]:
    log, records, report = open_log(directory, **options)
    log.close()
    return records, report


def position_in(sequence: int, offset: int, generation: int = 0) -> int:
    """The documented position of a frame: ``(sequence << 12 | generation) << 40 | offset``."""
    return ((sequence << 12 | generation) << 40) | offset


def offset_of(position: int) -> int:
    return position & OFFSET_MASK


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


RECORDS = [f"record number {i}".encode() * (i % 4 + 1) for i in range(10)]


# -- layout ----------------------------------------------------------------------------------


def test_segment_layout_is_header_then_crc_length_payload(tmp_path: Path) -> None:
    positions = write_log(tmp_path, [[b"hello", b""]])
    data = (tmp_path / SEGMENT_1).read_bytes()
    assert data[:HEADER] == b"AFLOG\x00" + struct.pack("<H", 1)
    # A segment number is its sequence << 12 | its compaction generation (here 1 and 0).
    segment = 1 << 12
    assert positions == [(segment << 40) | HEADER, (segment << 40) | (HEADER + FRAME + 5)]
    crc, length = struct.unpack_from("<II", data, HEADER)
    assert length == 5
    assert crc == zlib.crc32(struct.pack("<I", 5) + b"hello")
    assert data[HEADER + FRAME : HEADER + FRAME + 5] == b"hello"
    assert len(data) == HEADER + FRAME + 5 + FRAME


def test_missing_directory_is_a_fresh_log(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    log = FileLog(directory)
    assert list(log.scan()) == []
    assert log.last_scan == ScanReport(records=0)
    assert log.append([b"x"]) == [position_in(1, HEADER)]
    log.sync()
    log.close()
    assert reopen(directory)[0] == [b"x"]


def test_empty_directory_is_a_fresh_log(tmp_path: Path) -> None:
    records, report = reopen(tmp_path)
    assert records == []
    assert report == ScanReport(records=0)
    assert (tmp_path / SEGMENT_1).read_bytes()[:6] == b"AFLOG\x00"


def test_stray_files_are_ignored(tmp_path: Path) -> None:
    write_log(tmp_path, [RECORDS])
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "1.log").write_bytes(b"not a segment name")
    (tmp_path / f"{SEGMENT_1}.bak").write_bytes(b"junk")
    assert reopen(tmp_path)[0] == RECORDS
    assert verify_log(tmp_path) == []


def crash_after_creating_segment_2(directory: Path) -> None:
    """Leave a log whose segment 1 is sealed and whose segment 2 has no header yet."""

    def write(fd: int, data: bytes) -> int:
        if data.startswith(b"AFLOG") and (directory / SEGMENT_2).exists():
            raise OSError(errno.EIO, "the process dies right after creating segment 2")
        return os.write(fd, data)

    log = FileLog(directory, segment_bytes=64, write=write)
    list(log.scan())
    log.append([b"x" * 100])
    with pytest.raises(LogWriteError):
        log.append([b"y"])
    log.close()
    assert (directory / SEGMENT_2).stat().st_size == 0


def test_zero_length_last_segment_is_fine(tmp_path: Path) -> None:
    crash_after_creating_segment_2(tmp_path)
    assert verify_log(tmp_path) == []
    log, records, report = open_log(tmp_path)
    assert records == [b"x" * 100]
    assert report.torn_tail_path is None
    assert log.append([b"after"]) == [position_in(2, HEADER)]
    log.close()
    assert reopen(tmp_path)[0] == [b"x" * 100, b"after"]


@pytest.mark.parametrize(
    "content", [b"AFL", b"\x00" * 8, b"\x00" * 100], ids=["prefix", "8 zeros", "100 zeros"]
)
def test_torn_header_of_last_segment_is_truncated(tmp_path: Path, content: bytes) -> None:
    crash_after_creating_segment_2(tmp_path)
    (tmp_path / SEGMENT_2).write_bytes(content)
    [problem] = verify_log(tmp_path)
    assert (problem.path, problem.kind) == (str(tmp_path / SEGMENT_2), "torn_tail")
    log, records, report = open_log(tmp_path)
    assert records == [b"x" * 100]
    assert report.torn_tail_offset == 0
    assert report.torn_tail_bytes == len(content)
    assert log.append([b"after"]) == [position_in(2, HEADER)]
    log.close()
    assert reopen(tmp_path)[0] == [b"x" * 100, b"after"]


# -- torn tails ------------------------------------------------------------------------------


def test_torn_tail_at_every_byte_of_the_last_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "source"
    positions = write_log(source, [RECORDS[:-1], RECORDS[-1:]])
    segment = (source / SEGMENT_1).read_bytes()
    last = offset_of(positions[-1])
    assert len(segment) == last + FRAME + len(RECORDS[-1])
    for cut in range(last, len(segment)):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        (directory / SEGMENT_1).write_bytes(segment[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="actorflow.log"):
            log, records, report = open_log(directory)
        assert records == RECORDS[:-1], cut
        assert report.records == len(RECORDS) - 1
        if cut == last:
            assert report.torn_tail_path is None
            assert caplog.records == []
        else:
            assert report.torn_tail_path == str(directory / SEGMENT_1)
            assert report.torn_tail_offset == last
            assert report.torn_tail_bytes == cut - last
            [warning] = caplog.records
            assert warning.levelno == logging.WARNING
            message = warning.getMessage()
            assert str(directory / SEGMENT_1) in message
            assert f"offset {last}" in message
            assert f"{cut - last} bytes dropped" in message
        assert (directory / SEGMENT_1).stat().st_size == last
        # The log goes on where the intact records end.
        assert log.append([b"next"]) == [position_in(1, last)]
        log.close()
        assert reopen(directory)[0] == [*RECORDS[:-1], b"next"]


def test_torn_tail_leaves_a_clean_log_for_verify(tmp_path: Path) -> None:
    positions = write_log(tmp_path, [RECORDS])
    path = tmp_path / SEGMENT_1
    os.truncate(path, offset_of(positions[-1]) + 3)
    [problem] = verify_log(tmp_path)
    assert problem.kind == "torn_tail"
    assert problem.offset == offset_of(positions[-1])
    reopen(tmp_path)
    assert verify_log(tmp_path) == []


def test_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    positions = write_log(tmp_path, [RECORDS])
    path = tmp_path / SEGMENT_1
    size = path.stat().st_size
    with path.open("ab") as file:
        file.write(b"\x00" * 5000)  # a filesystem extended the file but not its data
    records, report = reopen(tmp_path)
    assert records == RECORDS
    assert report.torn_tail_offset == size
    assert report.torn_tail_bytes == 5000
    assert offset_of(positions[-1]) < size


@pytest.mark.parametrize("where", ["crc", "length", "payload", "last payload byte"])
def test_flipped_byte_in_last_record_is_a_torn_tail(tmp_path: Path, where: str) -> None:
    positions = write_log(tmp_path, [RECORDS])
    last = offset_of(positions[-1])
    path = tmp_path / SEGMENT_1
    size = path.stat().st_size
    flip_byte(
        path,
        {"crc": last, "length": last + 5, "payload": last + 12, "last payload byte": size - 1}[
            where
        ],
    )
    records, report = reopen(tmp_path)
    assert records == RECORDS[:-1]
    assert report.torn_tail_offset == last
    assert report.torn_tail_bytes == size - last
    assert path.stat().st_size == last


# -- corruption ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["crc", "length", "payload"])
def test_flipped_byte_mid_segment_is_corruption(tmp_path: Path, where: str) -> None:
    positions = write_log(tmp_path, [RECORDS])
    damaged = offset_of(positions[4])
    path = tmp_path / SEGMENT_1
    before = path.read_bytes()
    flip_byte(path, damaged + {"crc": 1, "length": 4, "payload": 10}[where])
    log = FileLog(tmp_path, durability="none")
    scan = log.scan()
    got = []
    with pytest.raises(LogCorruptedError) as caught:
        for _, record in scan:
            got.append(record)
    log.close()
    assert got == RECORDS[:4]  # what came before the damage was yielded, nothing after
    assert caught.value.path == str(path)
    assert caught.value.offset == damaged
    assert str(path) in str(caught.value)
    assert f"offset {damaged}" in str(caught.value)
    assert len(path.read_bytes()) == len(before)  # nothing truncated
    [problem] = verify_log(tmp_path)
    assert (problem.path, problem.offset, problem.kind) == (str(path), damaged, "corrupted")


def test_verify_lists_every_damaged_record_and_changes_nothing(tmp_path: Path) -> None:
    positions = write_log(tmp_path, [RECORDS])
    path = tmp_path / SEGMENT_1
    for index in (2, 6):
        flip_byte(path, offset_of(positions[index]) + FRAME + 1)
    os.truncate(path, path.stat().st_size - 2)
    before = path.read_bytes()
    problems = verify_log(tmp_path)
    assert [(p.offset, p.kind) for p in problems] == [
        (offset_of(positions[2]), "corrupted"),
        (offset_of(positions[6]), "corrupted"),
        (offset_of(positions[9]), "torn_tail"),
    ]
    assert all(isinstance(p, LogProblem) and str(path) in str(p) for p in problems)
    assert path.read_bytes() == before


def test_verify_of_missing_directory_is_empty(tmp_path: Path) -> None:
    assert verify_log(tmp_path / "nothing") == []
    assert not (tmp_path / "nothing").exists()


def test_flipped_byte_in_a_non_last_segment_is_corruption(tmp_path: Path) -> None:
    positions = write_log(tmp_path, [[record] for record in RECORDS], segment_bytes=64)
    assert len(list(tmp_path.glob("*.log"))) > 3
    first = positions[0]
    assert first >> 40 == 1 << 12  # sequence 1, generation 0
    path = tmp_path / SEGMENT_1
    flip_byte(path, path.stat().st_size - FRAME - 2)  # inside segment 1's last record
    with pytest.raises(LogCorruptedError) as caught:
        reopen(tmp_path, segment_bytes=64)
    assert caught.value.path == str(path)


@pytest.mark.parametrize("cut", ["mid record", "seal", "header"])
def test_truncated_non_last_segment_is_corruption(tmp_path: Path, cut: str) -> None:
    positions = write_log(tmp_path, [[record] for record in RECORDS], segment_bytes=64)
    path = tmp_path / SEGMENT_2
    in_segment_2 = [offset_of(p) for p in positions if p >> 52 == 2]
    size = path.stat().st_size
    length = {"mid record": in_segment_2[-1] + 3, "seal": size - FRAME, "header": 5}[cut]
    os.truncate(path, length)
    with pytest.raises(LogCorruptedError) as caught:
        reopen(tmp_path, segment_bytes=64)
    assert caught.value.path == str(path)
    assert [p.kind for p in verify_log(tmp_path)] == ["corrupted"]


def test_missing_segment_is_corruption(tmp_path: Path) -> None:
    write_log(tmp_path, [[record] for record in RECORDS], segment_bytes=64)
    (tmp_path / SEGMENT_2).unlink()
    with pytest.raises(LogCorruptedError) as caught:
        reopen(tmp_path)
    assert caught.value.path == str(tmp_path / SEGMENT_2)
    assert "missing" in str(caught.value)


def test_bytes_after_a_seal_are_corruption(tmp_path: Path) -> None:
    write_log(tmp_path, [[record] for record in RECORDS], segment_bytes=64)
    path = tmp_path / SEGMENT_1
    size = path.stat().st_size
    with path.open("ab") as file:
        file.write(b"extra")
    with pytest.raises(LogCorruptedError) as caught:
        reopen(tmp_path)
    assert caught.value.offset == size


# -- format ----------------------------------------------------------------------------------


def test_other_format_version_is_a_format_error(tmp_path: Path) -> None:
    write_log(tmp_path, [RECORDS])
    path = tmp_path / SEGMENT_1
    data = bytearray(path.read_bytes())
    data[6:8] = struct.pack("<H", 2)
    path.write_bytes(bytes(data))
    with pytest.raises(LogFormatError) as caught:
        reopen(tmp_path)
    message = str(caught.value)
    assert str(path) in message
    assert "version 2" in message
    assert "version 1" in message
    assert path.read_bytes() == bytes(data)
    assert [p.kind for p in verify_log(tmp_path)] == ["format"]


@pytest.mark.parametrize("last", [True, False])
def test_segment_with_another_magic_is_a_format_error(tmp_path: Path, last: bool) -> None:
    write_log(tmp_path, [[record] for record in RECORDS], segment_bytes=64)
    path = tmp_path / SEGMENT_1
    if last:
        for segment in tmp_path.glob("*.log"):
            if segment != path:
                segment.unlink()
    data = bytearray(path.read_bytes())
    data[:6] = b"SQLite"
    path.write_bytes(bytes(data))
    with pytest.raises(LogFormatError, match="not an actorflow log segment"):
        reopen(tmp_path)


# -- segments --------------------------------------------------------------------------------


def test_segments_roll_when_full(tmp_path: Path) -> None:
    payloads = [bytes([i]) * 30 for i in range(40)]
    log = FileLog(tmp_path, durability="none", segment_bytes=100)
    list(log.scan())
    positions = [log.append([payload])[0] for payload in payloads]
    # A batch goes whole into one segment, even past segment_bytes.
    batch_positions = log.append(payloads[:10])
    assert len({position >> 40 for position in batch_positions}) == 1
    assert log.read(positions) == payloads
    log.close()
    segments = sorted(tmp_path.glob("*.log"))
    assert len(segments) == len({position >> 40 for position in positions + batch_positions})
    assert [int(path.stem) for path in segments] == list(range(1, len(segments) + 1))
    assert positions == sorted(positions)
    for path in segments[:-1]:
        assert path.stat().st_size >= 100
    log, records, _ = open_log(tmp_path, segment_bytes=100)
    assert records == payloads + payloads[:10]
    assert log.read(list(reversed(positions))) == list(reversed(payloads))
    log.close()
    assert verify_log(tmp_path) == []


def test_read_works_across_many_segments(tmp_path: Path) -> None:
    # More segments than the read file descriptor cache holds.
    payloads = [f"r{i}".encode() * 20 for i in range(100)]
    positions = write_log(tmp_path, [[payload] for payload in payloads], segment_bytes=32)
    assert len({position >> 40 for position in positions}) == 100
    log, _, _ = open_log(tmp_path, segment_bytes=32)
    for _ in range(2):
        assert log.read(positions) == payloads
    log.close()


def test_sealed_last_segment_continues_in_a_new_one(tmp_path: Path) -> None:
    write_log(tmp_path, [[record] for record in RECORDS[:3]], segment_bytes=64)
    segments = sorted(tmp_path.glob("*.log"))
    segments[-1].unlink()  # the crash came after sealing the previous one, before this one
    log, records, _ = open_log(tmp_path)
    assert records == RECORDS[:2]
    assert log.append([b"x"])[0] >> 52 == int(segments[-1].stem)
    log.close()


def test_read_of_unknown_position_raises(tmp_path: Path) -> None:
    positions = write_log(tmp_path, [RECORDS])
    log, _, _ = open_log(tmp_path)
    with pytest.raises(ValueError):
        log.read([position_in(5, HEADER)])
    with pytest.raises(ValueError):
        log.read([positions[-1] + 10_000])
    log.close()


def test_read_detects_damage_after_open(tmp_path: Path) -> None:
    positions = write_log(tmp_path, [RECORDS])
    log, _, _ = open_log(tmp_path)
    flip_byte(tmp_path / SEGMENT_1, offset_of(positions[3]) + FRAME)
    with pytest.raises(LogCorruptedError) as caught:
        log.read([positions[3]])
    assert caught.value.offset == offset_of(positions[3])
    log.close()


# -- usage errors ----------------------------------------------------------------------------


def test_directory_is_locked_while_open(tmp_path: Path) -> None:
    log, _, _ = open_log(tmp_path)
    other = FileLog(tmp_path)
    with pytest.raises(StorageError, match="already open"):
        list(other.scan())
    other.close()
    log.close()
    reopen(tmp_path)


def test_append_before_scan_is_refused(tmp_path: Path) -> None:
    log = FileLog(tmp_path)
    with pytest.raises(RuntimeError, match="scan"):
        log.append([b"x"])
    list(log.scan())
    with pytest.raises(RuntimeError, match="once"):
        log.scan()
    log.close()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FileLog(tmp_path, segment_bytes=8)
    with pytest.raises(ValueError):
        FileLog(tmp_path, durability="sometimes")  # type: ignore[arg-type]


# -- durability and disk faults --------------------------------------------------------------


class Disk:
    """Counts fsyncs and fails one on demand, as a dying disk would."""

    def __init__(self) -> None:
        self.fsyncs: list[int] = []
        self.fail_fsync: int | None = None  # errno to raise
        self.fail_write: int | None = None
        self.short_writes = False

    def fsync(self, fd: int) -> None:
        if self.fail_fsync is not None:
            raise OSError(self.fail_fsync, os.strerror(self.fail_fsync))
        self.fsyncs.append(fd)
        os.fsync(fd)

    def write(self, fd: int, data: bytes) -> int:
        if self.fail_write is not None:
            raise OSError(self.fail_write, os.strerror(self.fail_write))
        if self.short_writes and len(data) > 1:
            return os.write(fd, data[: len(data) // 2])
        return os.write(fd, data)


def test_fsync_durability_syncs_appends(tmp_path: Path) -> None:
    disk = Disk()
    log = FileLog(tmp_path, fsync=disk.fsync, write=disk.write)
    list(log.scan())
    created = len(disk.fsyncs)
    assert created >= 2  # the new segment and the directory
    log.append([b"a"])
    log.sync()
    assert len(disk.fsyncs) == created + 1
    log.sync()  # nothing new: nothing to sync
    assert len(disk.fsyncs) == created + 1
    log.close()


def test_durability_none_never_fsyncs(tmp_path: Path) -> None:
    disk = Disk()
    log = FileLog(tmp_path, durability="none", segment_bytes=64, fsync=disk.fsync)
    list(log.scan())
    for record in RECORDS:
        log.append([record])
        log.sync()
    log.close()
    assert disk.fsyncs == []
    assert reopen(tmp_path)[0] == RECORDS


def test_rolling_syncs_the_full_segment_first(tmp_path: Path) -> None:
    disk = Disk()
    log = FileLog(tmp_path, segment_bytes=64, fsync=disk.fsync)
    list(log.scan())
    log.append([b"x" * 100])  # not synced by the caller
    before = len(disk.fsyncs)
    log.append([b"y"])  # rolls: seals and fsyncs segment 1, creates segment 2
    assert len(disk.fsyncs) == before + 3  # segment 1, segment 2, the directory
    log.close()


def test_short_writes_are_completed(tmp_path: Path) -> None:
    disk = Disk()
    disk.short_writes = True
    log = FileLog(tmp_path, write=disk.write)
    list(log.scan())
    log.append(RECORDS)
    log.close()
    assert reopen(tmp_path)[0] == RECORDS


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_failed_fsync_fails_the_log_for_good(tmp_path: Path, code: int) -> None:
    disk = Disk()
    log = FileLog(tmp_path, fsync=disk.fsync)
    list(log.scan())
    kept = log.append(RECORDS[:5])
    log.sync()
    log.append(RECORDS[5:])
    disk.fail_fsync = code
    with pytest.raises(LogWriteError) as caught:
        log.sync()
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == code
    disk.fail_fsync = None  # the disk "recovers": the log must not believe it
    for attempt in (lambda: log.sync(), lambda: log.append([b"more"]), lambda: log.append([])):
        with pytest.raises(LogWriteError) as again:
            attempt()
        assert isinstance(again.value.__cause__, OSError)
        assert again.value.__cause__.errno == code
    fsyncs = len(disk.fsyncs)
    log.close()  # releases the files without pretending to sync
    assert len(disk.fsyncs) == fsyncs
    records, _ = reopen(tmp_path)
    assert records[:5] == RECORDS[:5]
    log, _, _ = open_log(tmp_path)
    assert log.read(kept) == RECORDS[:5]
    log.close()


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_failed_write_fails_the_log_for_good(tmp_path: Path, code: int) -> None:
    disk = Disk()
    log = FileLog(tmp_path, write=disk.write, fsync=disk.fsync)
    list(log.scan())
    log.append(RECORDS[:5])
    log.sync()
    disk.fail_write = code
    with pytest.raises(LogWriteError) as caught:
        log.append(RECORDS[5:])
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == code
    disk.fail_write = None
    with pytest.raises(LogWriteError):
        log.append([b"more"])
    with pytest.raises(LogWriteError):
        log.sync()
    log.close()
    assert reopen(tmp_path)[0] == RECORDS[:5]


def test_write_failing_halfway_leaves_a_torn_tail(tmp_path: Path) -> None:
    calls = 0

    def write(fd: int, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    log = FileLog(tmp_path)
    list(log.scan())
    log.append(RECORDS[:5])
    log.close()
    log = FileLog(tmp_path, write=write)
    list(log.scan())
    with pytest.raises(LogWriteError):
        log.append(RECORDS[5:])
    log.close()
    records, report = reopen(tmp_path)
    assert records[:5] == RECORDS[:5]
    assert report.torn_tail_bytes > 0


def test_failed_fsync_while_rolling_fails_the_log(tmp_path: Path) -> None:
    disk = Disk()
    log = FileLog(tmp_path, segment_bytes=64, fsync=disk.fsync)
    list(log.scan())
    log.append([b"x" * 100])
    log.sync()
    disk.fail_fsync = errno.EIO
    with pytest.raises(LogWriteError):
        log.append([b"y"])
    disk.fail_fsync = None
    with pytest.raises(LogWriteError):
        log.append([b"y"])
    log.close()
    assert reopen(tmp_path)[0] == [b"x" * 100]


def test_failed_fsync_of_truncation_is_a_write_error(tmp_path: Path) -> None:
    positions = write_log(tmp_path, [RECORDS])
    os.truncate(tmp_path / SEGMENT_1, offset_of(positions[-1]) + 2)
    disk = Disk()
    disk.fail_fsync = errno.EIO
    log = FileLog(tmp_path, fsync=disk.fsync)
    with pytest.raises(LogWriteError):
        list(log.scan())
    with pytest.raises(LogWriteError):
        log.append([b"x"])
    log.close()


def test_memory_log_reopen_shares_records() -> None:
    store: EventStore = MemoryLog(durability="none")
    assert store.durability == "none"
    assert list(store.scan()) == []
    store.append([b"a"])
    assert isinstance(store, MemoryLog)
    again = store.reopen()
    assert list(again.scan()) == [(0, b"a")]
    with pytest.raises(ValueError):
        again.read([1])


def test_abandoned_or_failed_scan_lets_the_directory_go(tmp_path: Path) -> None:
    positions = write_log(tmp_path, [RECORDS])
    log = FileLog(tmp_path)
    scan = log.scan()
    next(scan)
    assert isinstance(scan, Generator)
    scan.close()  # abandoned: the store can never append, so it holds nothing
    with pytest.raises(RuntimeError, match="scan"):
        log.append([b"x"])
    flip_byte(tmp_path / SEGMENT_1, offset_of(positions[2]) + FRAME)
    failed = FileLog(tmp_path)
    with pytest.raises(LogCorruptedError):
        list(failed.scan())
    flip_byte(tmp_path / SEGMENT_1, offset_of(positions[2]) + FRAME)  # repaired
    assert reopen(tmp_path)[0] == RECORDS
    log.close()
    failed.close()
