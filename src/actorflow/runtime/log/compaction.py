"""Compaction of the file log: rewrite sealed segments without the records of expired runs.

Pure file work, run in a worker thread; the runtime decides which runs are kept (``keep``) and
applies the new positions (``Rewrite.moves``) on the event loop. Each step a crash can cut is
named (``STEPS``); the crash tests stop a real process at every one of them:

1. ``write``: the kept frames, byte for byte, then a seal, go to ``<new name>.tmp``;
2. ``sync``: the temporary file is fsynced;
3. ``rename``: it is renamed to the new generation's name, and the directory fsynced. From here
   an open takes the new generation (both hold every kept record);
4. ``retire``: once no reader holds an old position, the old generation is unlinked;
5. ``drop``: a leading run of emptied segments is deleted, oldest first.

A crash before 3 leaves the old generation and a ``.tmp`` file, which the next open deletes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .file_log import (
    _FRAME_BYTES,
    _GENERATION_MASK,
    _HEADER_BYTES,
    _OFFSET_BITS,
    _SEAL,
    _SEGMENT_HEADER,
    _TMP_SUFFIX,
    FileLog,
    _frames,
    _read_segment,
    _segment_name,
)

__all__ = ["STEPS", "Rewrite", "drop_emptied_prefix", "retire", "rewrite_segment", "run_id_of"]

STEPS = ("write", "sync", "rename", "retire", "drop")

#: Called with a step's name just before it; tests stop the process there.
CrashPoint = Callable[[str], None]


@dataclass(slots=True)
class Rewrite:
    """One segment rewritten: where its kept records moved, and what was dropped."""

    old: int
    new: int
    #: old position -> new position, for every kept record
    moves: dict[int, int] = field(default_factory=dict)
    kept_runs: set[str] = field(default_factory=set)
    records_kept: int = 0
    records_dropped: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


def run_id_of(record: bytes) -> str:
    """The run id of a record (``["evnt_…","wrun_…",…``) without decoding the rest of it."""
    return record.split(b'"', 4)[3].decode()


def rewrite_segment(
    log: FileLog,
    number: int,
    keep: Callable[[str], bool],
    *,
    min_garbage: float = 0.0,
    pace: Callable[[int], None] | None = None,
    crash: CrashPoint | None = None,
) -> Rewrite | None:
    """Rewrite sealed segment ``number`` keeping only records whose run ``keep`` accepts.

    Returns ``None`` when the segment keeps everything, when less than ``min_garbage`` of its
    bytes would go, or when it has been rewritten as many times as a number allows. ``pace`` is
    called with the bytes handled so far, to bound the CPU and I/O a background pass takes.
    """
    if number & _GENERATION_MASK == _GENERATION_MASK or number == log.active_segment:
        return None
    directory = log.directory
    data = _read_segment(directory / _segment_name(number))
    base = number << _OFFSET_BITS
    kept: list[tuple[int, int]] = []  # (offset, end) of each kept frame
    runs: set[str] = set()
    dropped = 0
    verdicts: dict[str, bool] = {}
    frames = _frames(data, base, _HEADER_BYTES)
    seen = 0
    try:
        while True:
            position, payload = next(frames)
            offset = position - base
            run_id = run_id_of(payload)
            verdict = verdicts.get(run_id)
            if verdict is None:
                verdict = verdicts[run_id] = keep(run_id)
            if verdict:
                kept.append((offset, offset + _FRAME_BYTES + len(payload)))
                runs.add(run_id)
            else:
                dropped += 1
            seen += 1
            if pace is not None and seen % 2048 == 0:
                pace(offset)
    except StopIteration as stop:
        if stop.value.kind != "seal":
            return None  # not a sealed segment (the scan at open has checked the rest)
    if not dropped:
        return None
    size = sum(end - start for start, end in kept)
    total = len(data)
    if kept and (total - size) < min_garbage * total:
        return None
    new = number + 1
    rewrite = Rewrite(number, new, records_kept=len(kept), records_dropped=dropped,
                      bytes_before=total, kept_runs=runs)  # fmt: skip
    target = directory / _segment_name(new)
    tmp = target.with_name(target.name + _TMP_SUFFIX)
    _step(crash, "write")
    at = _HEADER_BYTES
    new_base = new << _OFFSET_BITS
    parts = [_SEGMENT_HEADER]
    for start, end in kept:
        parts.append(data[start:end])
        rewrite.moves[base | start] = new_base | at
        at += end - start
    parts.append(_SEAL)
    body = b"".join(parts)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, body)
        _step(crash, "sync")
        if log.durability == "fsync":
            os.fsync(fd)
    finally:
        os.close(fd)
    _step(crash, "rename")
    os.rename(tmp, target)
    log.sync_directory()
    log.adopt(new, at)
    rewrite.bytes_after = len(body)
    if pace is not None:
        pace(total)
    return rewrite


def retire(log: FileLog, numbers: Iterable[int], crash: CrashPoint | None = None) -> None:
    """Unlink replaced generations; call once no reader holds one of their positions."""
    numbers = list(numbers)
    if not numbers:
        return
    _step(crash, "retire")
    for number in numbers:
        log.forget_segment(number)
        _unlink(log.directory / _segment_name(number))
    log.sync_directory()


def drop_emptied_prefix(log: FileLog, crash: CrashPoint | None = None) -> int:
    """Delete the leading segments compaction emptied, but the last of them; how many went.

    The last one stays so that the first segment is a rewritten generation: an open can then
    tell a compacted head from a lost first segment.
    """
    leading: list[int] = []
    for number, end in log.segment_ends():
        if number == log.active_segment or end != _HEADER_BYTES:
            break
        leading.append(number)
    doomed = leading[:-1]
    if not doomed:
        return 0
    _step(crash, "drop")
    for number in doomed:
        log.forget_segment(number)
        _unlink(log.directory / _segment_name(number))
    log.sync_directory()
    return len(doomed)


class Pacer:
    """Sleeps so that a background pass uses at most ``share`` of one core (and of the disk)."""

    def __init__(self, share: float) -> None:
        self.share = share
        self._started = time.monotonic()

    def __call__(self, _done: int) -> None:
        busy = time.monotonic() - self._started
        if busy > 0.01:
            time.sleep(busy * (1 - self.share) / self.share)
            self._started = time.monotonic()


def _step(crash: CrashPoint | None, name: str) -> None:
    if crash is not None:
        crash(name)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
