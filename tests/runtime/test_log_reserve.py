"""Space the file log reserves ahead of its records, and what a crash leaves of it.

A crash is taken as the bytes on disk at that moment: the segment files are copied while the
log that wrote them is still open (every record in them synced), then the copy is opened.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import pytest

from actorflow.errors import LogCorruptedError
from actorflow.runtime.log import file_log, reserve
from actorflow.runtime.log.file_log import FileLog, verify_log
from actorflow.runtime.log.reserve import RESERVE_ALIGN

SEGMENT_1 = "00000000000000000001.log"
SEGMENT_2 = "00000000000000000002.log"
FRAME = 8
OFFSET_MASK = (1 << 40) - 1
RECORDS = [b"first record", b"second", b"x" * 300]

needs_fallocate = pytest.mark.skipif(
    not hasattr(os, "posix_fallocate"), reason="this platform has no posix_fallocate"
)


def opened(directory: Path, **options: object) -> FileLog:
    log = FileLog(directory, **options)  # type: ignore[arg-type]
    for _ in log.scan():
        pass
    return log


def crash_copy(source: Path, target: Path) -> Path:
    """The directory as a crash would leave it: the files as they are now, log still open."""
    target.mkdir()
    for path in source.glob("*.log"):
        shutil.copyfile(path, target / path.name)
    return target


def scanned(directory: Path) -> list[bytes]:
    log = FileLog(directory)
    try:
        return [record for _, record in log.scan()]
    finally:
        log.close()


@needs_fallocate
def test_an_open_segment_is_reserved_ahead_and_closes_at_its_last_record(tmp_path: Path) -> None:
    log = opened(tmp_path)
    positions = log.append(RECORDS)
    log.sync()
    path = tmp_path / SEGMENT_1
    end = (positions[-1] & OFFSET_MASK) + FRAME + len(RECORDS[-1])
    size = path.stat().st_size
    assert size % RESERVE_ALIGN == 0 and size > end
    assert path.read_bytes()[end:] == bytes(size - end)
    assert verify_log(tmp_path) == []  # reserved space is not a torn tail
    assert log.read(positions) == RECORDS
    log.close()
    assert path.stat().st_size == end  # a log at rest holds records only
    assert verify_log(tmp_path) == []


def test_without_reserving_the_file_ends_at_its_last_record(tmp_path: Path) -> None:
    for options in ({"reserve": False}, {"durability": "none"}):
        directory = tmp_path / str(len(list(tmp_path.iterdir())))
        log = opened(directory, **options)
        positions = log.append(RECORDS)
        log.sync()
        end = (positions[-1] & OFFSET_MASK) + FRAME + len(RECORDS[-1])
        assert (directory / SEGMENT_1).stat().st_size == end
        log.close()


@needs_fallocate
def test_a_crash_leaves_reserved_space_that_reopens_silently_and_is_written_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = opened(tmp_path / "live")
    log.append(RECORDS[:2])
    log.sync()
    copy = crash_copy(tmp_path / "live", tmp_path / "crashed")
    log.close()
    size = (copy / SEGMENT_1).stat().st_size
    assert size % RESERVE_ALIGN == 0

    caplog.set_level(logging.INFO, logger="actorflow.log")
    assert verify_log(copy) == []
    again = FileLog(copy)
    assert [record for _, record in again.scan()] == RECORDS[:2]
    assert again.last_scan is not None and again.last_scan.torn_tail_path is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # Appends go on right after the last record, over the reserved zeros.
    [position] = again.append([RECORDS[2]])
    again.sync()
    crash_copy(copy, tmp_path / "crashed-again")
    again.close()
    reread = FileLog(tmp_path / "crashed-again")
    found = list(reread.scan())
    assert [record for _, record in found] == RECORDS
    assert found[-1][0] == position
    reread.close()


@needs_fallocate
def test_a_torn_record_in_reserved_space_is_reported_without_the_reserve(tmp_path: Path) -> None:
    log = opened(tmp_path / "live")
    positions = log.append(RECORDS[:2])
    log.sync()
    copy = crash_copy(tmp_path / "live", tmp_path / "crashed")
    log.close()
    end = (positions[-1] & OFFSET_MASK) + FRAME + len(RECORDS[1])
    torn = b"\x11\x22\x33\x44\x40\x00\x00\x00half a rec"  # a frame whose write was cut short
    with (copy / SEGMENT_1).open("r+b") as file:
        file.seek(end)
        file.write(torn)
    [problem] = verify_log(copy)
    assert (problem.kind, problem.offset) == ("torn_tail", end)
    assert f"these {len(torn)} bytes" in problem.detail
    again = FileLog(copy)
    assert [record for _, record in again.scan()] == RECORDS[:2]
    report = again.last_scan
    assert report is not None
    assert (report.torn_tail_offset, report.torn_tail_bytes) == (end, len(torn))
    again.close()
    assert (copy / SEGMENT_1).stat().st_size == end
    assert verify_log(copy) == []


@needs_fallocate
def test_a_seal_followed_by_reserved_space_opens(tmp_path: Path) -> None:
    """A crash while a full segment was sealed: the seal is written, the reserve not yet cut."""
    log = opened(tmp_path / "live", segment_bytes=64)
    log.append([RECORDS[0]])
    log.sync()
    copy = crash_copy(tmp_path / "live", tmp_path / "crashed")
    log.close()
    path = copy / SEGMENT_1
    data = path.read_bytes()
    end = len(data.rstrip(b"\0"))
    with path.open("r+b") as file:
        file.seek(end)
        file.write(file_log._SEAL)
    assert verify_log(copy) == []
    again = opened(copy)
    assert again.active_segment >> 12 == 2  # appends go to a new segment
    again.append([RECORDS[1]])
    again.close()
    assert scanned(copy) == RECORDS[:2]


@needs_fallocate
def test_a_non_last_segment_ending_in_reserved_space_is_corruption(tmp_path: Path) -> None:
    log = opened(tmp_path / "live")
    log.append([RECORDS[0]])
    log.sync()
    copy = crash_copy(tmp_path / "live", tmp_path / "crashed")
    log.close()
    # A second segment after the first, which was never sealed: records may be missing.
    second = FileLog(tmp_path / "other")
    for _ in second.scan():
        pass
    second.append([RECORDS[1]])
    second.close()
    shutil.copyfile(tmp_path / "other" / SEGMENT_1, copy / SEGMENT_2)
    [problem] = verify_log(copy)
    assert problem.kind == "corrupted" and "without its seal" in problem.detail
    with pytest.raises(LogCorruptedError, match="without its seal"):
        scanned(copy)


@needs_fallocate
def test_a_filesystem_that_cannot_reserve_falls_back_to_appending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # No local filesystem refuses posix_fallocate here; the refusal is made at that one call.
    def refuse(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(reserve, "_fallocate", refuse)
    caplog.set_level(logging.WARNING, logger="actorflow.log")
    log = opened(tmp_path)
    positions = log.append(RECORDS)
    log.sync()
    end = (positions[-1] & OFFSET_MASK) + FRAME + len(RECORDS[-1])
    assert (tmp_path / SEGMENT_1).stat().st_size == end
    assert any("cannot reserve space" in r.getMessage() for r in caplog.records)
    assert log.read(positions) == RECORDS
    log.close()
    assert scanned(tmp_path) == RECORDS


@needs_fallocate
def test_a_full_disk_stops_reserving_until_the_next_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A disk with too little room to reserve a megabyte ahead, but enough for the records: the
    # refusal is made at that one call, as no test can fill a real disk safely.
    real = reserve._fallocate
    assert real is not None
    full = {"refusals": 0}

    def once_full(fd: int, offset: int, length: int) -> None:
        if full["refusals"] == 0:
            full["refusals"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, offset, length)

    caplog.set_level(logging.WARNING, logger="actorflow.log")
    log = opened(tmp_path, segment_bytes=4096)
    monkeypatch.setattr(reserve, "_fallocate", once_full)
    first = log.append([b"a" * 70_000])  # past the first 64 KiB reserved: refused, written
    log.sync()
    assert any("until the next segment" in r.getMessage() for r in caplog.records)
    end = (first[0] & OFFSET_MASK) + FRAME + 70_000
    assert (tmp_path / SEGMENT_1).stat().st_size == end
    second = log.append([b"b" * 10])  # the segment is full: a new one, reserved again
    log.sync()
    assert second[0] >> 52 == 2
    size = (tmp_path / SEGMENT_2).stat().st_size
    assert size % RESERVE_ALIGN == 0 and size > (second[0] & OFFSET_MASK) + FRAME + 10
    log.close()
    assert scanned(tmp_path) == [b"a" * 70_000, b"b" * 10]


@needs_fallocate
def test_a_refusal_that_grew_the_file_is_cut_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """posix_fallocate may extend a file part of the way before it fails for lack of room."""

    def part_then_full(fd: int, offset: int, length: int) -> None:
        os.ftruncate(fd, offset + length // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    log = opened(tmp_path)  # reserved a megabyte ahead: the record goes past it
    monkeypatch.setattr(reserve, "_fallocate", part_then_full)
    positions = log.append([b"c" * 1_200_000])
    log.sync()
    log.close()
    end = (positions[0] & OFFSET_MASK) + FRAME + 1_200_000
    assert (tmp_path / SEGMENT_1).stat().st_size == end
    again = FileLog(tmp_path)
    assert [record for _, record in again.scan()] == [b"c" * 1_200_000]
    assert again.last_scan is not None and again.last_scan.torn_tail_path is None
    again.close()
