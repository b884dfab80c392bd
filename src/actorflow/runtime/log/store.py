"""The storage interface every log backend implements.

A store holds opaque records (bytes, one event each) in one total order. It knows nothing of
events: framing, checksums, segments and durability are its business; meaning is the runtime's.
Calls are blocking; the group-commit writer (``writer.py``) runs them in a worker thread, one
call at a time, so a store needs no locking of its own. A store whose class sets
``writes_locally = True`` (local files, memory) also lets the writer hand a small batch's append
and sync to a thread of its own while the event loop waits for it, blocked, for a moment.

Life cycle: ``scan()`` once at open (it verifies every record, truncates a torn tail, and raises
:class:`~actorflow.errors.LogCorruptedError` for damage before the tail), then any number of
``append()`` + ``sync()`` pairs and ``read()`` calls, then ``close()``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["Durability", "EventStore", "Position", "ScanReport"]

#: Where a record sits: an opaque, totally ordered integer chosen by the store. The file log packs
#: the segment number and the byte offset into it; a memory store uses the index.
Position = int

#: ``"fsync"``: no append is acknowledged before its fsync. ``"none"``: appends are never fsynced;
#: for tests and benchmarks only, and labelled as such wherever it is used.
Durability = Literal["fsync", "none"]


@dataclass(frozen=True, slots=True)
class ScanReport:
    """What ``scan()`` found besides the records: a truncated torn tail, if any."""

    records: int
    torn_tail_path: str | None = None
    torn_tail_offset: int | None = None
    torn_tail_bytes: int = 0


class EventStore(Protocol):
    """A durable, append-only sequence of records."""

    durability: Durability

    def scan(self) -> Iterator[tuple[Position, bytes]]:
        """Yield every record in log order, verifying each.

        A torn tail (an incomplete or bad last record with nothing valid after it) is truncated
        and described in ``last_scan``. Must be exhausted before the first ``append``.

        Raises:
            LogCorruptedError: a bad record is followed by valid ones (not a torn tail).
            LogFormatError: the directory holds another format version.
        """
        ...

    @property
    def last_scan(self) -> ScanReport | None:
        """The report of the finished ``scan()``, or ``None`` before it finished."""
        ...

    def append(self, records: Sequence[bytes]) -> list[Position]:
        """Write records after the last one, in order, without syncing. Returns their positions.

        Raises:
            LogWriteError: the write failed; the store accepts nothing more.
        """
        ...

    def sync(self) -> None:
        """Make every appended record durable (fsync). A no-op when ``durability == "none"``.

        Raises:
            LogWriteError: fsync failed. The store is then failed for good: a failed fsync is
                never retried as if the data were safe.
        """
        ...

    def read(self, positions: Sequence[Position]) -> list[bytes]:
        """Return the records at these positions (already appended ones only)."""
        ...

    def close(self) -> None:
        """Release files. Appended records are synced first unless the store has failed."""
        ...
