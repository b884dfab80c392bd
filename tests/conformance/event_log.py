"""The conformance suite every event store backend must pass (file, memory, later PostgreSQL).

A backend provides an *opener*: a callable that opens the same storage each time it is called
and returns a new, unscanned store, as a process restart would. Each check takes a fresh opener
(empty storage) and raises ``AssertionError`` when the backend breaks the contract.

Use it one check per test, so failures are named::

    @pytest.mark.parametrize("check", EVENT_LOG_CHECKS, ids=lambda check: check.__name__)
    def test_my_backend(check, tmp_path):
        check(lambda: MyStore(tmp_path))

or all at once with :func:`check_event_log`, whose argument makes a fresh opener per check.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from actorflow.runtime.log.store import EventStore, Position

__all__ = ["EVENT_LOG_CHECKS", "Opener", "check_event_log"]

#: Opens (or reopens) one storage and returns a new store that has not been scanned yet.
Opener = Callable[[], EventStore]


def open_scanned(open_log: Opener) -> tuple[EventStore, list[tuple[Position, bytes]]]:
    """Open a store, exhaust its scan, and return it with what the scan yielded."""
    log = open_log()
    records = list(log.scan())
    report = log.last_scan
    assert report is not None, "last_scan must be set once scan() is exhausted"
    assert report.records == len(records)
    return log, records


def reopened(open_log: Opener) -> list[tuple[Position, bytes]]:
    """Reopen the storage, scan it, close it, and return what the scan yielded."""
    log, records = open_scanned(open_log)
    log.close()
    return records


def _payloads(seed: int, count: int, max_size: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randrange(max_size + 1)) for _ in range(count)]


def check_fresh_storage_is_empty(open_log: Opener) -> None:
    """A new storage scans to nothing and reports no torn tail."""
    log = open_log()
    assert log.durability in ("fsync", "none")
    scan = log.scan()
    assert log.last_scan is None, "last_scan must stay None until scan() is exhausted"
    assert list(scan) == []
    report = log.last_scan
    assert report is not None
    assert report.records == 0
    assert report.torn_tail_path is None
    assert report.torn_tail_bytes == 0
    log.close()


def check_append_returns_increasing_positions(open_log: Opener) -> None:
    """Positions grow strictly within a batch, across batches and across reopens."""
    log, _ = open_scanned(open_log)
    seen: list[Position] = []
    for batch in ([b"a"], [b"b", b"c", b"d"], [b""], [b"e" * 1000, b"f"]):
        positions = log.append(batch)
        assert len(positions) == len(batch)
        seen.extend(positions)
        log.sync()
    log.close()
    log, records = open_scanned(open_log)
    assert [position for position, _ in records] == seen
    more = log.append([b"g", b"h"])
    log.sync()
    log.close()
    seen.extend(more)
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)


def check_empty_append_is_a_no_op(open_log: Opener) -> None:
    """Appending no records returns no positions and adds nothing."""
    log, _ = open_scanned(open_log)
    assert log.append([]) == []
    log.sync()
    position = log.append([b"only"])
    assert log.append([]) == []
    log.sync()
    log.close()
    assert reopened(open_log) == [(position[0], b"only")]


def check_read_returns_appended_records(open_log: Opener) -> None:
    """``read`` gives each record back, in the order asked, before and after a sync."""
    log, _ = open_scanned(open_log)
    records = [b"first", b"", b"third", bytes(range(256))]
    positions = log.append(records)
    assert log.read(positions) == records
    log.sync()
    assert log.read(list(reversed(positions))) == list(reversed(records))
    assert log.read([positions[2], positions[2], positions[0]]) == [b"third", b"third", b"first"]
    assert log.read([]) == []
    log.close()


def check_scan_after_reopen_returns_exactly_what_was_appended(open_log: Opener) -> None:
    """What a reopen scans is every appended record, in order, at the positions append gave."""
    log, _ = open_scanned(open_log)
    expected: list[tuple[Position, bytes]] = []
    for batch in (_payloads(1, 5, 100), _payloads(2, 1, 0), _payloads(3, 50, 300)):
        expected.extend(zip(log.append(batch), batch, strict=True))
        log.sync()
    log.close()
    assert reopened(open_log) == expected
    # Reopening twice changes nothing.
    assert reopened(open_log) == expected


def check_records_survive_many_reopens(open_log: Opener) -> None:
    """Each open appends after what the previous ones left; nothing is lost or reordered."""
    expected: list[tuple[Position, bytes]] = []
    for round_ in range(5):
        log, records = open_scanned(open_log)
        assert records == expected
        batch = [f"round {round_} record {i}".encode() for i in range(round_ + 1)]
        expected.extend(zip(log.append(batch), batch, strict=True))
        log.sync()
        log.close()
    assert reopened(open_log) == expected


def check_empty_records(open_log: Opener) -> None:
    """Empty records are records: kept, counted and read back."""
    log, _ = open_scanned(open_log)
    positions = log.append([b"", b"", b"x", b""])
    log.sync()
    log.close()
    log, records = open_scanned(open_log)
    assert records == list(zip(positions, [b"", b"", b"x", b""], strict=True))
    assert log.read(positions) == [b"", b"", b"x", b""]
    log.close()


def check_zero_filled_records(open_log: Opener) -> None:
    """Records of zero bytes (what a crash often leaves on disk) still round-trip."""
    payloads = [b"\x00" * size for size in (1, 4, 8, 9, 4096)]
    log, _ = open_scanned(open_log)
    positions = log.append(payloads)
    log.sync()
    log.close()
    assert reopened(open_log) == list(zip(positions, payloads, strict=True))


def check_large_records(open_log: Opener) -> None:
    """1 MiB records round-trip through append, read and a reopen."""
    rng = random.Random(7)
    big = [rng.randbytes(1 << 20), b"small", rng.randbytes((1 << 20) + 3)]
    log, _ = open_scanned(open_log)
    positions = log.append(big)
    log.sync()
    assert log.read(positions) == big
    log.close()
    log, records = open_scanned(open_log)
    assert records == list(zip(positions, big, strict=True))
    assert log.read([positions[2], positions[0]]) == [big[2], big[0]]
    log.close()


def check_many_small_records(open_log: Opener) -> None:
    """Twenty thousand small records in batches of varied size round-trip in order."""
    rng = random.Random(11)
    log, _ = open_scanned(open_log)
    expected: list[tuple[Position, bytes]] = []
    index = 0
    while index < 20_000:
        size = rng.choice((1, 2, 7, 64, 500))
        batch = [i.to_bytes(4, "little") * rng.randrange(3) for i in range(index, index + size)]
        expected.extend(zip(log.append(batch), batch, strict=True))
        index += size
        if rng.random() < 0.3:
            log.sync()
    log.sync()
    log.close()
    records = reopened(open_log)
    assert len(records) == len(expected)
    assert records == expected


def check_read_of_arbitrary_positions(open_log: Opener) -> None:
    """Any mix of positions, from this open and earlier ones, reads back the right records."""
    rng = random.Random(13)
    log, _ = open_scanned(open_log)
    first = _payloads(17, 300, 2000)
    first_positions = log.append(first)
    log.sync()
    log.close()
    log, records = open_scanned(open_log)
    second = _payloads(19, 300, 2000)
    second_positions = log.append(second)
    by_position = dict(zip(first_positions + second_positions, first + second, strict=True))
    assert dict(records) == dict(zip(first_positions, first, strict=True))
    for _ in range(20):
        picked: Sequence[Position] = rng.choices(list(by_position), k=rng.randrange(1, 50))
        assert log.read(picked) == [by_position[position] for position in picked]
    log.close()


def check_close_syncs_and_is_idempotent(open_log: Opener) -> None:
    """``close`` keeps appended records even without an explicit ``sync``; closing twice is fine."""
    log, _ = open_scanned(open_log)
    positions = log.append([b"unsynced"])
    log.close()
    log.close()
    assert reopened(open_log) == [(positions[0], b"unsynced")]


EVENT_LOG_CHECKS: tuple[Callable[[Opener], None], ...] = (
    check_fresh_storage_is_empty,
    check_append_returns_increasing_positions,
    check_empty_append_is_a_no_op,
    check_read_returns_appended_records,
    check_scan_after_reopen_returns_exactly_what_was_appended,
    check_records_survive_many_reopens,
    check_empty_records,
    check_zero_filled_records,
    check_large_records,
    check_many_small_records,
    check_read_of_arbitrary_positions,
    check_close_syncs_and_is_idempotent,
)


def check_event_log(make_opener: Callable[[], Opener]) -> None:
    """Run every check, each on a fresh, empty storage from ``make_opener()``.

    Raises:
        AssertionError: the backend breaks the contract (the message names the check).
    """
    for check in EVENT_LOG_CHECKS:
        try:
            check(make_opener())
        except AssertionError as exc:
            raise AssertionError(f"{check.__name__}: {exc}") from exc
