"""Disk faults at the runtime level (issue 6): failing ``fsync`` and ``write``, damaged log files.

The promise under test: no acknowledgement is ever given for an event that is not on disk, a
failed ``fsync`` is never retried as if the data were safe (the lesson PostgreSQL learned in
2018), everything acknowledged before a fault survives a restart, and a damaged data directory
gets the behaviour the SPEC sets, with a message that says where and what.

Disk errors (EIO, ENOSPC) come through ``FileLog``'s ``write=``/``fsync=`` seams, since a test
cannot make a real disk fail; everything else is real: files in ``tmp_path``, damage made by
truncating, appending, flipping bytes and rewriting headers between two runtimes.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.conftest import read_events, wait_for_hook, wait_until

import actorflow as af
from actorflow.runtime.log.file_log import FORMAT_VERSION, MAGIC, FileLog, verify_log

pytestmark = pytest.mark.anyio

OFFSET_MASK = (1 << 40) - 1
FRAME = 8
SEGMENT_1 = "00000000000000000001.log"
SEGMENT_2 = "00000000000000000002.log"
MESSAGES = {errno.EIO: os.strerror(errno.EIO), errno.ENOSPC: os.strerror(errno.ENOSPC)}
CODES = pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])


class Disk:
    """The disk under a ``FileLog``: real writes and fsyncs, failing on demand as a dying disk.

    ``fail_fsync(code, after=n)`` lets ``n`` more fsyncs succeed, fails the next one with
    ``code``, and then "recovers": later fsyncs would succeed, which is exactly when a runtime
    that retried would wrongly believe its data safe. ``calls_after_failure`` counts them.
    """

    def __init__(self) -> None:
        self.fsyncs = 0
        #: inode -> where its written bytes ended when an fsync of it last succeeded: its
        #: durable prefix. Not the file's size, which counts space reserved ahead of the records.
        self.durable: dict[int, int] = {}
        self._written: dict[int, int] = {}  # inode -> the end of the bytes written to it
        self.writes = 0
        self.calls_after_failure = 0
        self.failed: int | None = None
        self._fsync_fault: tuple[int, int] | None = None  # (errno, successes left)
        self._write_fault: tuple[int, int | None] | None = None  # (errno, bytes written first)

    def fail_fsync(self, code: int, *, after: int = 0) -> None:
        self._fsync_fault = (code, after)

    def fail_write(self, code: int, *, partial: int | None = None) -> None:
        """Fail the next write with ``code``; ``partial``: first write that many bytes (short)."""
        self._write_fault = (code, partial)

    def fsync(self, fd: int) -> None:
        if self.failed is not None:
            self.calls_after_failure += 1
        elif self._fsync_fault is not None:
            code, left = self._fsync_fault
            if left == 0:
                self.failed = code
                raise OSError(code, os.strerror(code))
            self._fsync_fault = (code, left - 1)
        status = os.fstat(fd)  # before the call: fsync covers what was written until now
        os.fsync(fd)
        self.fsyncs += 1
        if stat.S_ISREG(status.st_mode):
            written = self._written.get(status.st_ino, status.st_size)
            self.durable[status.st_ino] = min(written, status.st_size)

    def write(self, fd: int, data: bytes) -> int:
        if self.failed is not None:
            self.calls_after_failure += 1
        elif self._write_fault is not None:
            code, partial = self._write_fault
            if partial is None:
                self.failed = code
                raise OSError(code, os.strerror(code))
            # A disk filling up: a short write, then the error on the next call.
            self._write_fault = (code, None)
            self.writes += 1
            return self._written_to(fd, os.write(fd, data[:partial]))
        self.writes += 1
        return self._written_to(fd, os.write(fd, data))

    def _written_to(self, fd: int, count: int) -> int:
        inode = os.fstat(fd).st_ino
        end = os.lseek(fd, 0, os.SEEK_CUR)
        self._written[inode] = max(self._written.get(inode, 0), end)
        return count


def faulty_runtime(data_dir: Path, disk: Disk, *workflows: Any) -> af.Runtime:
    store = FileLog(data_dir / "log", write=disk.write, fsync=disk.fsync)
    return af.Runtime(data_dir, workflows=workflows, store=store)


@af.workflow
async def take_until_stop(token: str) -> list[Any]:
    """Takes payloads from its hook in order until ``"stop"``; returns what it took."""
    got: list[Any] = []
    async for payload in af.create_hook(token=token):
        if payload == "stop":
            break
        got.append(payload)
    return got


def received(data_dir: Path, token: str) -> list[Any]:
    """The payloads the log holds for ``token``, in log order (the directory must be closed)."""
    return [
        e.data["payload"]
        for e in read_events(data_dir / "log")
        if e.type == "hook_received" and e.data.get("token") == token
    ]


def durable_received(data_dir: Path, disk: Disk, token: str) -> list[Any]:
    """The payloads for ``token`` within what a successful fsync covered (a power cut's view)."""
    copy = data_dir / "durable-prefix"
    shutil.rmtree(copy, ignore_errors=True)
    (copy / "log").mkdir(parents=True)
    for segment in sorted((data_dir / "log").glob("*.log")):
        size = disk.durable.get(segment.stat().st_ino, 0)
        (copy / "log" / segment.name).write_bytes(segment.read_bytes()[:size])
    return received(copy, token)


async def assert_refused_at_once(call: Callable[[], Awaitable[Any]], disk: Disk) -> str:
    """``call`` raises ``LogWriteError`` without touching the disk; returns the message."""
    writes, fsyncs = disk.writes, disk.fsyncs
    with anyio.fail_after(5):  # "at once": a refused call must not wait for anything
        with pytest.raises(af.LogWriteError) as info:
            await call()
    assert (disk.writes, disk.fsyncs) == (writes, fsyncs)
    return str(info.value)


# -- fsync failing mid-run -------------------------------------------------------------------


@CODES
@pytest.mark.parametrize("waiting", ["resume_hook", "start"])
async def test_failed_fsync_stops_acknowledging_and_is_never_retried(
    tmp_path: Path, code: int, waiting: str
) -> None:
    disk = Disk()
    async with faulty_runtime(tmp_path, disk, take_until_stop) as rt:
        run = await rt.start(take_until_stop, "t")
        await wait_for_hook(rt, "t")
        acked = [
            await rt.resume_hook("t", "a0"),
            await rt.resume_hook("t", "a1", idempotency_key="k1"),
        ]
        assert all(hook.run_id == run.run_id for hook in acked)
        await rt.wait_idle()
        assert rt.healthy

        disk.fail_fsync(code)
        with pytest.raises(af.LogWriteError) as info:  # the caller that was waiting: no ack
            if waiting == "resume_hook":
                await rt.resume_hook("t", "b", idempotency_key="kb")
            else:
                await rt.start(take_until_stop, "u")
        message = str(info.value)
        assert "fsync" in message and MESSAGES[code] in message and str(tmp_path / "log") in message
        assert not rt.healthy

        # The disk "recovers"; the runtime must not believe it. Every later call is refused at
        # once, whether it would append (start, resume, cancel) or only confirm (a repeated key).
        later = [
            lambda: rt.resume_hook("t", "c"),
            lambda: rt.resume_hook("t", "c", idempotency_key="kc"),
            lambda: rt.resume_hook("t", "a1", idempotency_key="k1"),
            lambda: rt.start(take_until_stop, "v"),
            lambda: run.cancel(),
        ]
        for call in later:
            refused = await assert_refused_at_once(call, disk)
            assert "failed earlier" in refused and MESSAGES[code] in refused
        assert not rt.healthy
    # Closing a failed log does not fsync either: the failed fsync was never retried.
    assert disk.failed == code
    assert disk.calls_after_failure == 0

    # Everything acknowledged before the fault is on disk.
    events = read_events(tmp_path / "log")
    assert [e.run_id for e in events if e.type == "run_created"][0] == run.run_id
    assert durable_received(tmp_path, disk, "t") == ["a0", "a1"]

    # A restart on a healthy disk recovers the run; a sender retries what was not acknowledged
    # with its idempotency key, and each payload is taken exactly once.
    async with af.Runtime(tmp_path, workflows=[take_until_stop]) as rt:
        assert rt.healthy
        await wait_for_hook(rt, "t")
        if waiting == "resume_hook":
            await rt.resume_hook("t", "b", idempotency_key="kb")
        await rt.resume_hook("t", "a1", idempotency_key="k1")  # a late duplicate: no effect
        await rt.resume_hook("t", "stop")
        expected = ["a0", "a1", "b"] if waiting == "resume_hook" else ["a0", "a1"]
        assert await rt.get_run(run.run_id).result() == expected
        # The start that failed was never acknowledged: its run may exist (its record reached
        # the page cache) but at most once.
        others = [r for r in rt.state.runs if r != run.run_id]
        assert len(others) <= (1 if waiting == "start" else 0)


@CODES
@pytest.mark.parametrize("after", [0, 1, 3, 7])
async def test_concurrent_senders_lose_nothing_acknowledged_when_fsync_fails(
    tmp_path: Path, code: int, after: int
) -> None:
    """Many senders share group commits; the fault lands on the ``after+1``-th fsync from now."""
    tokens = ["p", "q", "r"]
    acked: list[tuple[str, str]] = []
    refused: list[tuple[str, str]] = []
    disk = Disk()
    async with faulty_runtime(tmp_path, disk, take_until_stop) as rt:
        runs = {token: await rt.start(take_until_stop, token) for token in tokens}
        for token in tokens:
            await wait_for_hook(rt, token)
        await rt.wait_idle()
        disk.fail_fsync(code, after=after)

        async def sender(token: str, name: str) -> None:
            for i in range(12):
                payload = f"{name}{i}"
                try:
                    await rt.resume_hook(token, payload, idempotency_key=payload)
                except af.LogWriteError:
                    refused.append((token, payload))
                else:
                    acked.append((token, payload))

        async with anyio.create_task_group() as tg:
            for token in tokens:
                for name in ("x", "y"):
                    tg.start_soon(sender, token, f"{token}{name}")
        assert refused and not rt.healthy
        assert len(acked) + len(refused) == len(tokens) * 2 * 12
    assert disk.calls_after_failure == 0

    # Acknowledged means fsynced: each acknowledged payload is within the durable prefix.
    durable = {t: durable_received(tmp_path, disk, t) for t in tokens}
    for token, payload in acked:
        assert durable[token].count(payload) == 1

    async with af.Runtime(tmp_path, workflows=[take_until_stop]) as rt:
        for token, payload in refused:  # the senders retry with the same keys
            await rt.resume_hook(token, payload, idempotency_key=payload)
        for token in tokens:
            await rt.resume_hook(token, "stop")
        for token, run in runs.items():
            got = await rt.get_run(run.run_id).result()
            sent = [p for t, p in acked + refused if t == token]
            assert sorted(got) == sorted(sent)  # every payload, each exactly once
            for name in ("x", "y"):  # one sender's acknowledged payloads keep their order
                mine = [p for t, p in acked if t == token and p.startswith(token + name)]
                assert [p for p in got if p in mine] == mine


@CODES
async def test_failed_fsync_of_a_runs_own_events_fails_the_log_not_the_run(
    tmp_path: Path, code: int
) -> None:
    """The fault lands on the batch the actor wrote (``run_started``, ``hook_created``)."""
    disk = Disk()
    async with faulty_runtime(tmp_path, disk, take_until_stop) as rt:
        await rt.wait_idle()
        disk.fail_fsync(code, after=1)  # run_created is synced; the actor's batch after it fails
        run = await rt.start(take_until_stop, "own")
        await wait_until(lambda: not rt.healthy)
        await assert_refused_at_once(lambda: rt.resume_hook("own", 1), disk)
        # The run is not failed for a disk fault: no terminal event can be written anyway.
        assert await run.status() in ("pending", "running")
    assert disk.calls_after_failure == 0
    assert [e.type for e in read_events(tmp_path / "log")][0] == "run_created"

    async with af.Runtime(tmp_path, workflows=[take_until_stop]) as rt:
        await wait_for_hook(rt, "own")
        await rt.resume_hook("own", 1)
        await rt.resume_hook("own", "stop")
        assert await rt.get_run(run.run_id).result() == [1]


# -- write failing mid-run ---------------------------------------------------------------------


@CODES
@pytest.mark.parametrize("partial", [None, 5], ids=["nothing-written", "short-write"])
async def test_failed_write_stops_acknowledging_and_recovers(
    tmp_path: Path, code: int, partial: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    disk = Disk()
    async with faulty_runtime(tmp_path, disk, take_until_stop) as rt:
        run = await rt.start(take_until_stop, "w")
        await wait_for_hook(rt, "w")
        await rt.resume_hook("w", "a0")
        await rt.wait_idle()
        disk.fail_write(code, partial=partial)
        with pytest.raises(af.LogWriteError) as info:
            await rt.resume_hook("w", "b", idempotency_key="kb")
        assert "write" in str(info.value) and MESSAGES[code] in str(info.value)
        assert not rt.healthy
        await assert_refused_at_once(lambda: rt.resume_hook("w", "c"), disk)
        await assert_refused_at_once(lambda: rt.start(take_until_stop, "z"), disk)
    assert disk.calls_after_failure == 0

    caplog.set_level(logging.WARNING, logger="actorflow.log")
    async with af.Runtime(tmp_path, workflows=[take_until_stop]) as rt:
        if partial is None:
            assert rt.torn_tail is None
        else:
            # The half-written record is a torn tail: truncated at open, and reported.
            assert rt.torn_tail is not None and SEGMENT_1 in rt.torn_tail
            assert f"({partial} bytes)" in rt.torn_tail
            assert any("torn tail" in r.getMessage() for r in caplog.records)
        await wait_for_hook(rt, "w")
        await rt.resume_hook("w", "b", idempotency_key="kb")
        await rt.resume_hook("w", "stop")
        assert await rt.get_run(run.run_id).result() == ["a0", "b"]
    assert verify_log(tmp_path / "log") == []


# -- faults while opening -------------------------------------------------------------------------


@CODES
@pytest.mark.parametrize(
    "when", ["creating-the-directory", "creating-the-first-segment", "truncating-a-torn-tail"]
)
async def test_fsync_failing_at_open_refuses_to_start_and_lets_the_directory_go(
    tmp_path: Path, code: int, when: str
) -> None:
    if when == "truncating-a-torn-tail":
        await suspended_run(tmp_path, "open", ["a"])
        path = tmp_path / "log" / SEGMENT_1
        with path.open("ab") as file:
            file.write(b"\x01\x02\x03")  # a torn frame header
    elif when == "creating-the-first-segment":
        (tmp_path / "log").mkdir()
    disk = Disk()
    disk.fail_fsync(code)
    # The directory entry cannot be made durable: the log cannot be opened (StorageError); a
    # segment or a truncation cannot: the log cannot be written (LogWriteError, a StorageError).
    expected = af.StorageError if when == "creating-the-directory" else af.LogWriteError
    with pytest.raises(expected) as info:
        async with faulty_runtime(tmp_path, disk, take_until_stop):
            pytest.fail("a runtime whose log cannot be made durable must not start")
    message = str(info.value)
    assert MESSAGES[code] in message and str(tmp_path / "log") in message
    if when == "truncating-a-torn-tail":
        assert "cannot truncate the torn tail" in message
    assert disk.calls_after_failure == 0
    # The refused start released the directory: a healthy disk opens it.
    async with af.Runtime(tmp_path, workflows=[take_until_stop]) as rt:
        assert rt.healthy
        if when == "truncating-a-torn-tail":
            await wait_for_hook(rt, "open")
            await rt.resume_hook("open", "stop")
    assert verify_log(tmp_path / "log") == []


# -- damaged data directories ------------------------------------------------------------------


def records(log_dir: Path) -> list[tuple[Path, int, bytes]]:
    """``(segment path, frame offset, record)`` of every record of a closed, healthy log."""
    log = FileLog(log_dir, durability="none")
    try:
        return [
            (log_dir / f"{position >> 52:020d}.log", position & OFFSET_MASK, record)
            for position, record in log.scan()
        ]
    finally:
        log.close()


async def suspended_run(data_dir: Path, token: str, payloads: list[str], **log: Any) -> str:
    """Start a ``take_until_stop`` run, resume it with ``payloads``, stop the runtime."""
    store = FileLog(data_dir / "log", **log) if log else None
    async with af.Runtime(data_dir, workflows=[take_until_stop], store=store) as rt:
        run = await rt.start(take_until_stop, token)
        await wait_for_hook(rt, token)
        for payload in payloads:
            await rt.resume_hook(token, payload)
        await rt.wait_idle()
    return run.run_id


async def finish(data_dir: Path, run_id: str, token: str) -> Any:
    async with af.Runtime(data_dir, workflows=[take_until_stop]) as rt:
        await wait_for_hook(rt, token)
        await rt.resume_hook(token, "stop")
        return await rt.get_run(run_id).result()


@pytest.mark.parametrize("damage", ["partial-frame", "last-record-cut", "zero-filled"])
async def test_torn_last_record_is_truncated_reported_and_the_run_recovers(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = await suspended_run(tmp_path, "torn", ["a", "b", "c"])
    path, offset, record = records(tmp_path / "log")[-1]
    assert b'"c"' in record  # the last record is the last resume
    size = path.stat().st_size
    with path.open("r+b") as file:
        if damage == "partial-frame":  # a crash in the middle of the next append
            file.seek(size)
            file.write(path.read_bytes()[offset : offset + FRAME + 5])
            torn_at, kept = size, ["a", "b", "c"]
        elif damage == "last-record-cut":  # a crash before the last record was complete
            file.truncate(size - 3)
            torn_at, kept = offset, ["a", "b"]
        else:  # what some filesystems leave after a crash: the file grew, the data did not
            file.seek(size)
            file.write(bytes(64))
            torn_at, kept = size, ["a", "b", "c"]
    problems = verify_log(tmp_path / "log")
    assert [(p.kind, p.offset) for p in problems] == [("torn_tail", torn_at)]

    caplog.set_level(logging.WARNING, logger="actorflow.log")
    async with af.Runtime(tmp_path, workflows=[take_until_stop]) as rt:
        assert rt.torn_tail is not None
        assert str(path) in rt.torn_tail and f"at offset {torn_at}" in rt.torn_tail
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(
            "torn tail" in m and str(path) in m and f"offset {torn_at}" in m and "truncated" in m
            for m in warnings
        ), warnings
        assert path.stat().st_size == torn_at
    assert verify_log(tmp_path / "log") == []
    assert await finish(tmp_path, run_id, "torn") == kept


@pytest.mark.parametrize("where", ["payload", "length", "checksum"])
async def test_flipped_byte_mid_segment_refuses_to_open_naming_file_and_offset(
    tmp_path: Path, where: str
) -> None:
    await suspended_run(tmp_path, "flip", [f"p{i}" for i in range(6)])
    all_records = records(tmp_path / "log")
    path, offset, record = all_records[len(all_records) // 2]
    at = {"payload": offset + FRAME + len(record) // 2, "length": offset + 4, "checksum": offset}
    data = bytearray(path.read_bytes())
    data[at[where]] ^= 0x10
    path.write_bytes(bytes(data))

    for _ in range(2):  # the directory is not truncated nor left locked by a refused open
        with pytest.raises(af.LogCorruptedError) as info:
            async with af.Runtime(tmp_path, workflows=[take_until_stop]):
                pytest.fail("a corrupted log must not open")
        assert info.value.path == str(path) and info.value.offset == offset
        message = str(info.value)
        assert f"{path} at offset {offset}" in message
        assert "not a torn tail" in message and "actorflow log verify" in message
        assert path.read_bytes() == bytes(data)
    assert [(p.kind, p.path, p.offset) for p in verify_log(tmp_path / "log")] == [
        ("corrupted", str(path), offset)
    ]


@pytest.mark.parametrize("cut", ["seal", "mid-record"])
async def test_truncated_segment_refuses_to_open(tmp_path: Path, cut: str) -> None:
    """A non-last segment cut short lost acknowledged records: corruption, not a torn tail."""
    await suspended_run(tmp_path, "seg", [f"payload-{i}" for i in range(12)], segment_bytes=512)
    first = tmp_path / "log" / SEGMENT_1
    assert (tmp_path / "log" / SEGMENT_2).exists()
    size = first.stat().st_size
    with first.open("r+b") as file:
        file.truncate(size - FRAME if cut == "seal" else size - FRAME - 10)
    before = {p.name: p.read_bytes() for p in (tmp_path / "log").glob("*.log")}
    with pytest.raises(af.LogCorruptedError) as info:
        async with af.Runtime(tmp_path, workflows=[take_until_stop]):
            pytest.fail("a truncated segment must not open")
    assert info.value.path == str(first)
    message = str(info.value)
    assert str(first) in message and "non-last segment was cut short" in message
    # Nothing was "repaired": the records after the damage were acknowledged.
    assert {p.name: p.read_bytes() for p in (tmp_path / "log").glob("*.log")} == before


async def test_missing_segment_refuses_to_open(tmp_path: Path) -> None:
    await suspended_run(tmp_path, "gone", [f"payload-{i}" for i in range(12)], segment_bytes=512)
    (tmp_path / "log" / SEGMENT_1).unlink()
    with pytest.raises(af.LogCorruptedError) as info:
        async with af.Runtime(tmp_path, workflows=[take_until_stop]):
            pytest.fail("a log with a missing segment must not open")
    assert SEGMENT_1 in str(info.value) and "missing" in str(info.value)


@pytest.mark.parametrize("layout", ["no-directory", "empty-directory", "empty-log-directory"])
async def test_empty_data_directory_is_a_fresh_start(tmp_path: Path, layout: str) -> None:
    data_dir = tmp_path / "data"
    if layout != "no-directory":
        data_dir.mkdir()
    if layout == "empty-log-directory":
        (data_dir / "log").mkdir()
    async with af.Runtime(data_dir, workflows=[take_until_stop]) as rt:
        assert rt.healthy and rt.torn_tail is None
        assert rt.state.runs == {}
        run = await rt.start(take_until_stop, "fresh")
        await wait_for_hook(rt, "fresh")
        await rt.resume_hook("fresh", 1)
        await rt.resume_hook("fresh", "stop")
        assert await run.result() == [1]
    assert (data_dir / "log" / SEGMENT_1).exists()
    assert verify_log(data_dir / "log") == []


@pytest.mark.parametrize("header", ["newer-version", "older-version", "not-a-log"])
async def test_another_format_refuses_to_open_and_says_which(tmp_path: Path, header: str) -> None:
    await suspended_run(tmp_path, "fmt", ["a"])
    path = tmp_path / "log" / SEGMENT_1
    data = bytearray(path.read_bytes())
    version = {"newer-version": FORMAT_VERSION + 1, "older-version": 0}.get(header)
    if version is not None:
        data[6:8] = version.to_bytes(2, "little")
    else:
        data[: len(MAGIC)] = b"SQLite"
    path.write_bytes(bytes(data))

    with pytest.raises(af.LogFormatError) as info:
        async with af.Runtime(tmp_path, workflows=[take_until_stop]):
            pytest.fail("a log of another format must not open")
    message = str(info.value)
    assert str(path) in message
    if version is not None:
        assert f"log format version {version}" in message
        assert f"reads version {FORMAT_VERSION}" in message
    else:
        assert "is not an actorflow log segment" in message and "b'SQLite'" in message
    assert path.read_bytes() == bytes(data)  # nothing was rewritten
