"""The disk the logs live on: where to put them, what it is, and what one fsync costs there."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .stats import percentile

__all__ = [
    "FsyncProbe",
    "MemoryBackedError",
    "default_work_dir",
    "filesystem_of",
    "fsync_latencies",
    "log_sync_latencies",
    "require_disk",
]

# Filesystems that live in memory: an fsync there costs nothing and proves nothing.
_MEMORY_FS = {"tmpfs", "ramfs", "devtmpfs", "overlay-tmpfs"}


def default_work_dir() -> Path:
    """``benchmarks/results/tmp``, next to this file: on the repository's (real) disk."""
    return Path(__file__).resolve().parent / "results" / "tmp"


def filesystem_of(path: Path) -> tuple[str, str]:
    """``(fstype, device)`` of the mount that holds ``path``, from ``/proc/mounts``."""
    target = os.path.realpath(path)
    best = ("", "?", "?")
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                device, mount, fstype, *_ = line.split()
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best[0]):
                    best = (mount, fstype, device)
    except OSError:
        return ("unknown", "unknown")
    return best[1], best[2]


def is_memory_backed(path: Path) -> bool:
    """True when ``path`` is on tmpfs or another filesystem kept in RAM."""
    return filesystem_of(path)[0] in _MEMORY_FS


class MemoryBackedError(RuntimeError):
    """fsync figures were asked of a filesystem kept in memory."""


def require_disk(path: Path) -> Path:
    """``path``, once checked not to be on a filesystem kept in memory (tmpfs, ramfs).

    Every scenario that reports fsync figures calls this on the directory its log goes to.

    Raises:
        MemoryBackedError: it is: an fsync there costs nothing and proves nothing.
    """
    fstype, device = filesystem_of(path)
    if fstype in _MEMORY_FS:
        raise MemoryBackedError(
            f"{path} is on {fstype} ({device}): an fsync there costs nothing and proves "
            "nothing; put the logs on a real disk (--work-dir)"
        )
    return path


def fsync_latencies(directory: Path, count: int, size: int = 128) -> list[float]:
    """Seconds taken by each of ``count`` rounds of ``write(size bytes)`` + ``fsync``.

    The same pattern the log uses for one small record: an ``O_APPEND`` file, one write, one
    fsync. The file is deleted afterwards.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"fsync-baseline-{os.getpid()}.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    record = b"x" * size
    out: list[float] = []
    try:
        os.write(fd, record)
        os.fsync(fd)  # the first fsync also writes the new inode: not a steady-state figure
        for _ in range(count):
            began = time.perf_counter()
            os.write(fd, record)
            os.fsync(fd)
            out.append(time.perf_counter() - began)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return out


class FsyncProbe:
    """One ``write(size bytes)`` + ``fsync`` per call, timed: a baseline sample taken between
    the runtime's operations, so baseline and subject see the same disk and the same load.

    Use as a context manager (it owns one ``O_APPEND`` file, deleted on exit).
    """

    def __init__(self, directory: Path, size: int = 128) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._path = directory / f"fsync-probe-{os.getpid()}.bin"
        self._record = b"x" * size
        self._fd = -1

    def __enter__(self) -> FsyncProbe:
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
        os.write(self._fd, self._record)
        os.fsync(self._fd)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)
        self._path.unlink(missing_ok=True)

    def __call__(self) -> float:
        began = time.perf_counter()
        os.write(self._fd, self._record)
        os.fsync(self._fd)
        return time.perf_counter() - began


def fsync_p50(directory: Path, count: int) -> float:
    """The median of ``fsync_latencies`` in seconds."""
    return percentile(fsync_latencies(directory, count), 50)


def log_sync_latencies(directory: Path, count: int, size: int = 250) -> dict[str, list[float]]:
    """Seconds per ``FileLog.append([one record]) + sync()``, space reserved ahead and not.

    Two logs side by side, one call to each in turn, so that both see the same disk and load:
    the reserved one is what the runtime writes to; the other appends as the log did before
    it reserved space (each write grows the file, so each fsync also journals the new size).
    """
    from actorflow.runtime.log.file_log import FileLog

    out: dict[str, list[float]] = {"reserved": [], "appended": []}
    record = b"r" * size
    logs = {
        name: FileLog(directory / f"log-sync-{name}-{os.getpid()}", reserve=name == "reserved")
        for name in out
    }
    try:
        for log in logs.values():
            for _ in log.scan():
                pass
        for _ in range(count):
            for name, log in logs.items():
                began = time.perf_counter()
                log.append([record])
                log.sync()
                out[name].append(time.perf_counter() - began)
    finally:
        for log in logs.values():
            log.close()
            for path in log.directory.glob("*"):
                path.unlink()
            log.directory.rmdir()
    return out
