"""An event store in memory, for tests: the same contract as the file log, and nothing durable."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from actorflow.runtime.log.store import Durability, Position, ScanReport

__all__ = ["MemoryLog"]


class MemoryLog:
    """An :class:`~actorflow.runtime.log.store.EventStore` kept in a list; positions are indexes.

    It simulates no faults. ``reopen()`` gives a new store over the same records, as a process
    restart over the same storage would, so recovery can be tested without files. ``durability``
    is only reported (nothing is ever written to disk); it defaults to ``"fsync"`` so that the
    code under test takes its default path.
    """

    #: Appends cost a list append: the loop may wait for small ones blocked, briefly.
    writes_locally = True

    def __init__(self, *, durability: Durability = "fsync") -> None:
        if durability not in ("fsync", "none"):
            raise ValueError(f"durability must be 'fsync' or 'none', not {durability!r}")
        self.durability: Durability = durability
        self._records: list[bytes] = []
        self._report: ScanReport | None = None
        self._scan_started = False
        self._closed = False

    def reopen(self) -> MemoryLog:
        """A new, unscanned store over the same records (every appended one survives)."""
        store = MemoryLog(durability=self.durability)
        store._records = self._records
        return store

    def scan(self) -> Iterator[tuple[Position, bytes]]:
        """Yield every record in order. Runs once per store."""
        if self._closed:
            raise RuntimeError("this MemoryLog is closed")
        if self._scan_started:
            raise RuntimeError("scan() runs once per MemoryLog; reopen() to scan again")
        self._scan_started = True
        return self._scan()

    def _scan(self) -> Iterator[tuple[Position, bytes]]:
        # Snapshot the length: records appended through another handle during the scan are not
        # part of this one, as with a file read at open.
        count = len(self._records)
        for position in range(count):
            yield position, self._records[position]
        self._report = ScanReport(records=count)

    @property
    def last_scan(self) -> ScanReport | None:
        """The report of the finished ``scan()``, or ``None`` before it finished."""
        return self._report

    def append(self, records: Sequence[bytes]) -> list[Position]:
        """Add records after the last one and return their positions."""
        if self._closed:
            raise RuntimeError("this MemoryLog is closed")
        if self._report is None:
            raise RuntimeError("exhaust scan() before the first append()")
        start = len(self._records)
        self._records.extend(bytes(record) for record in records)
        return list(range(start, len(self._records)))

    def sync(self) -> None:
        """Nothing to do: every appended record is already as durable as it will get."""

    def read(self, positions: Sequence[Position]) -> list[bytes]:
        """Return the records at these positions.

        Raises:
            ValueError: no record was appended at a position.
        """
        out: list[bytes] = []
        for position in positions:
            if not 0 <= position < len(self._records):
                raise ValueError(f"no record at position {position}")
            out.append(self._records[position])
        return out

    def close(self) -> None:
        """Mark the store closed; the records stay for ``reopen()``."""
        self._closed = True
