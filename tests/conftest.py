"""Shared fixtures and helpers of the test suite.

Backend neutrality: tests marked ``@pytest.mark.anyio`` run once on asyncio and once on trio
through the ``anyio_backend`` fixture below. Tests that need virtual time use pytest-trio
(``@pytest.mark.trio`` and its ``autojump_clock`` fixture) instead; no test carries both marks.

Helpers importable by test modules (``from tests.conftest import ...``):

- :class:`RecordingStore` wraps a real store and records every call, so a test can see what was
  appended and synced before an API call returned. :class:`HangingFsync`: a ``FileLog`` fsync
  seam that, once ``hang`` is set, holds every fsync until ``release`` is set.
- :func:`wait_until`, :func:`wait_for_hook`, :func:`resume_when_ready`: poll the runtime's state
  at scheduler checkpoints, never with real sleeps. A spinning task keeps the autojump clock
  still, so under it they wait for work, not for timers (sleep past a deadline first).
- :func:`read_records`, :func:`read_events`, :func:`copy_prefix`: read a closed log directory, or
  build a new one from the first ``k`` records of another (a process stopped after its k-th
  append).
- :class:`LaterRuntime`: a runtime whose wall clock starts ``offset`` seconds later (a process
  restarted later, without real waiting). :func:`drop_machines`: close live workflow coroutines
  inside the test that made them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import Phase, settings

from actorflow.errors import HookNotFoundError
from actorflow.runtime.core.events import Event
from actorflow.runtime.log.file_log import FileLog
from actorflow.runtime.log.store import Durability, EventStore, Position, ScanReport
from actorflow.runtime.payloads import Payloads
from actorflow.runtime.runtime import Runtime

#: ``--hypothesis-profile=mutation-check`` (scripts/check-model-mutations): a planted bug must
#: make the model-based test fail; it need not be shrunk to a minimal example, which takes long.
settings.register_profile(
    "mutation-check", phases=(Phase.explicit, Phase.reuse, Phase.generate), print_blob=False
)

__all__ = [
    "LaterRuntime",
    "RecordingStore",
    "copy_prefix",
    "drop_machines",
    "read_events",
    "read_records",
    "resume_when_ready",
    "wait_for_hook",
    "wait_until",
]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every ``@pytest.mark.anyio`` test runs on both backends."""
    return str(request.param)


class RecordingStore:
    """An ``EventStore`` that forwards to a real one and records each call in ``calls``.

    ``calls`` holds ``("append", [record types])`` and ``("sync",)`` tuples in call order; the
    store's own work (files, fsync) is untouched, so durability is real.
    """

    def __init__(self, inner: EventStore) -> None:
        self.inner = inner
        self.durability: Durability = inner.durability
        self.calls: list[tuple[Any, ...]] = []
        self.records = 0

    def scan(self) -> Iterator[tuple[Position, bytes]]:
        for position, record in self.inner.scan():
            self.records += 1
            yield position, record

    @property
    def last_scan(self) -> ScanReport | None:
        return self.inner.last_scan

    def append(self, records: Sequence[bytes]) -> list[Position]:
        positions = self.inner.append(records)
        self.records += len(records)
        self.calls.append(("append", [_record_type(r) for r in records]))
        return positions

    def sync(self) -> None:
        self.inner.sync()
        self.calls.append(("sync",))

    def read(self, positions: Sequence[Position]) -> list[bytes]:
        return self.inner.read(positions)

    def close(self) -> None:
        self.inner.close()

    def synced_types(self) -> list[str]:
        """Types of the records appended and then synced, in order (the durable ones)."""
        durable: list[str] = []
        pending: list[str] = []
        for call in self.calls:
            if call[0] == "append":
                pending.extend(call[1])
            else:
                durable.extend(pending)
                pending = []
        return durable


class HangingFsync:
    """Real fsyncs, each held after ``hang`` is set until ``release`` is (a disk that stalls).

    ``syncing`` is set once an fsync has started hanging; a hang ends by itself after 30 s.
    """

    def __init__(self) -> None:
        self.hang = False
        self.syncing = threading.Event()
        self.release = threading.Event()

    def __call__(self, fd: int) -> None:
        if self.hang:
            self.syncing.set()
            self.release.wait(30)
        os.fsync(fd)


def _record_type(record: bytes) -> str:
    return Payloads(None).decode_plain(record).type


async def wait_until(predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Poll ``predicate()`` until it holds: for state that no event announces.

    Between polls every other task runs (a checkpoint; worker threads get their turn as the
    interpreter switches). No time passes on the event loop's clock, so tests on virtual time
    can still assert exact times. Bounded by ``timeout`` seconds of real time.

    Raises:
        AssertionError: it never held.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition never held within {timeout} s: {predicate}")
        await anyio.lowlevel.checkpoint()


async def wait_for_hook(rt: Runtime, token: str) -> None:
    """Wait until a live hook owns ``token`` (the workflow has run up to ``create_hook``)."""

    def exists() -> bool:
        try:
            rt.state.tokens[token]
        except KeyError:
            return False
        return True

    await wait_until(exists)


async def resume_when_ready(rt: Runtime, token: str, payload: Any, **options: Any) -> Any:
    """``resume_hook`` once the hook exists (retrying ``HookNotFoundError`` at checkpoints)."""
    while True:
        try:
            return await rt.resume_hook(token, payload, **options)
        except HookNotFoundError:
            await anyio.lowlevel.checkpoint()


def read_records(directory: Path) -> list[bytes]:
    """Every record of a closed file log, in order."""
    log = FileLog(directory, durability="none")
    try:
        return [record for _, record in log.scan()]
    finally:
        log.close()


def read_events(directory: Path) -> list[Event]:
    """Every event of a closed (unencrypted) file log, in order."""
    payloads = Payloads(None)
    return [payloads.decode_plain(r, i) for i, r in enumerate(read_records(directory))]


def copy_prefix(records: Sequence[bytes], k: int, directory: Path, *, fsync: bool = True) -> None:
    """Write the first ``k`` records into a new file log at ``directory``."""
    log = FileLog(directory, durability="fsync" if fsync else "none")
    try:
        assert list(log.scan()) == []
        if k:
            log.append(list(records[:k]))
            log.sync()
    finally:
        log.close()


class LaterRuntime(Runtime):
    """A runtime whose wall clock is ``offset`` seconds ahead: a process restarted later.

    Only the wall-clock base moves; the clock still advances with the event loop's clock.
    """

    def __init__(self, *args: Any, offset: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock.offset = offset


def drop_machines(rt: Runtime) -> None:
    """Close every live workflow coroutine of ``rt`` now, inside the test.

    For tests whose workflows leave event-loop state behind (a cancel scope): closed later by
    the garbage collector, outside the event loop, such a coroutine raises in ``__del__`` and
    pytest reports it as an unraisable-exception warning in whichever test runs then.
    """
    for run in rt.state.runs.values():
        actor = run.actor
        if actor is not None:
            actor.drop()


# -- skipped tests are never quiet --------------------------------------------------------------

#: Names of the suites (the folder under tests/) in the summary of skipped tests.
_SUITES = {
    "postgres": "PostgreSQL",
    "web": "HTTP",
    "runtime": "runtime",
    "conformance": "conformance",
    "browser": "browser",
}


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """At the end of every run, how many tests were skipped, by suite and reason.

    pytest's own summary gives only a total ("130 skipped"), which reads like success. A suite
    that could not run (no PostgreSQL server, a missing extra) is named here with its cause, so
    a run that skipped it never passes for a run that tested it.
    """
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    groups: dict[tuple[str, str], int] = {}
    for report in skipped:
        reason = _skip_reason(report)
        parts = Path(str(report.fspath)).parts
        folder = parts[parts.index("tests") + 1] if "tests" in parts[:-2] else ""
        suite = _SUITES.get(folder, folder or "other")
        groups[suite, reason] = groups.get((suite, reason), 0) + 1
    terminalreporter.section("skipped tests", sep="-", yellow=True, bold=True)
    for (suite, reason), count in sorted(groups.items(), key=lambda item: -item[1]):
        noun = "test" if count == 1 else "tests"
        terminalreporter.write_line(f"{count} {suite} {noun} skipped: {reason}", yellow=True)


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr
    return " ".join(str(text).removeprefix("Skipped: ").split())
