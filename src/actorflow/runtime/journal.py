"""The journal: the one way the runtime's parts write a run's history.

``record`` submits an event to the group-commit writer and folds it into the state at once (in
submission order, which is log order), and hands back a ``Ticket`` that says when it is durable.
Durable events come back through ``LogWriter``'s ``on_durable`` in log order; the journal gives
them their log positions and routes them to the runs' mailboxes. "Durable before visible" lives
here: nothing reaches a mailbox, and no caller is answered, before its batch's fsync returned.

The journal is handed to the actor, the steps, the timers, the webhooks and the outside API; none
of them sees the runtime that owns it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import OverloadedError
from .core import events as ev
from .core.events import Event
from .ids import new_id
from .limits import Limits
from .log.store import EventStore
from .log.writer import LogWriter, Ticket
from .state import RunState, State

__all__ = ["Journal", "LogHealth", "Router"]

#: Events that reach a run's mailbox once durable (its completions and its own answers).
DELIVERED = frozenset(
    {ev.RUN_CREATED, ev.HOOK_RECEIVED, ev.STEP_COMPLETED, ev.STEP_FAILED, ev.WAIT_COMPLETED,
     ev.RUN_CANCELLED}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class LogHealth:
    started: bool
    failure: str | None  # why the log accepts nothing more, once it does not
    backlog: int  # events submitted and not yet durable


class Router(Protocol):
    """Where durable events go: the supervisor's mailboxes."""

    def deliver(self, run: RunState, event: Event) -> None: ...


class Journal:
    """Records events, tells when they are durable, and routes them once they are."""

    def __init__(self, state: State, clock: Callable[[], float], limits: Limits) -> None:
        self.state = state
        self.clock = clock
        self.limits = limits
        self._writer: LogWriter | None = None
        self._router: Router | None = None
        #: Called with the pending step ids of a run that has just ended (to stop them).
        self.on_run_ended: Callable[[list[str]], None] = lambda step_ids: None
        #: Called with each durable ``webhook_responded`` event.
        self.on_responded: Callable[[Event], None] = lambda event: None
        #: Called with each durable batch, and with each sync's duration (metrics); set before
        #: ``open``.
        self.on_durable_batch: Callable[[Sequence[Event]], None] = lambda events: None
        self.on_sync: Callable[[float], None] | None = None
        #: The store, once open (for what reads its size).
        self.store: EventStore | None = None

    # -- wiring ------------------------------------------------------------------------------

    def open(
        self,
        store: EventStore,
        encode: Callable[[Event, bytes | str | None, Mapping[str, bytes] | None], bytes],
        router: Router,
        on_failure: Callable[[BaseException], None],
    ) -> LogWriter:
        """Make the writer over ``store``; run its ``run`` in a task group."""
        self._router = router
        self.store = store
        self._writer = LogWriter(
            store, encode, self._on_durable, on_failure=on_failure, on_sync=self.on_sync
        )
        return self._writer

    @property
    def writer(self) -> LogWriter:
        assert self._writer is not None, "the journal is not open"
        return self._writer

    # -- writing -----------------------------------------------------------------------------

    def event(
        self, run_id: str, kind: str, correlation_id: str | None, data: dict[str, Any]
    ) -> Event:
        """A new event of ``run_id``, stamped now."""
        return Event(new_id("evnt_"), run_id, kind, correlation_id, self.clock(), data)

    def record(
        self,
        event: Event,
        key: bytes | str | None = None,
        *,
        record: bytes | None = None,
        encoded: Mapping[str, bytes] | None = None,
    ) -> Ticket:
        """Submit ``event`` and fold it into the state; its ``Ticket`` tells when it is durable.

        ``key``: encrypt its user values with this key instead of the run's. ``record``: the
        event already encoded (an inbox record another node made). ``encoded``: user values
        of its data already serialized, by name (stored as they are).

        Raises:
            LogWriteError: the log has failed.
            SerializationError: the event cannot be encoded (nothing committed).
        """
        writer = self._writer
        assert writer is not None, "the journal is not open"
        ticket = writer.submit(event, key, record=record, encoded=encoded)
        state = self.state
        run = state.runs.get(event.run_id)
        if event.type in ev.TERMINAL_EVENTS and run is not None and not run.finished:
            pending = list(run.pending or ())
            state.apply(event)
            self.on_run_ended(pending)
        else:
            state.apply(event)
        if run is None:
            run = state.runs.get(event.run_id)
        if run is not None and event.type not in ev.STREAM_EVENTS:
            run.submitted += 1
        return ticket

    def check(self) -> None:
        """Raise the log's failure, if it has failed (``LogWriteError``)."""
        self.writer.check()

    def admit(self) -> None:
        """Refuse new work while the log cannot take it.

        Raises:
            LogWriteError: the log has failed.
            OverloadedError: too many events are waiting for disk.
        """
        writer = self._writer
        assert writer is not None, "the journal is not open"
        writer.check()
        if writer.backlog >= self.limits.max_backlog:
            raise OverloadedError(
                f"the event log has {writer.backlog} events waiting for disk; retry shortly",
                retry_after=1.0,
            )

    async def flush(self) -> None:
        """Return once everything submitted so far is durable.

        Raises:
            LogWriteError: the log failed.
        """
        await self.writer.flush()

    async def settle(self, event: Event | None) -> None:
        """Return once ``event`` (recorded earlier, maybe not yet written) is durable."""
        if event is not None and event.position < 0:
            await self.writer.flush()

    @staticmethod
    def is_durable(event: Event | None) -> bool:
        return event is not None and event.position >= 0

    def unwritten(self, run: RunState) -> bool:
        """True while some of ``run``'s events are submitted and not yet written."""
        return run.submitted > len(run.positions)

    @property
    def healthy(self) -> bool:
        return self._writer is not None and self._writer.healthy

    @property
    def sync_overruns(self) -> int:
        """Small batches the loop stopped waiting for blocked (see ``LogWriter``)."""
        return 0 if self._writer is None else self._writer.inline_overruns

    def health(self) -> LogHealth:
        """The log's state, for health checks: opened, failed (and why), events waiting."""
        writer = self._writer
        if writer is None:
            return LogHealth(started=False, failure=None, backlog=0)
        failure = writer.failure
        return LogHealth(True, None if failure is None else str(failure), writer.backlog)

    # -- durable events ----------------------------------------------------------------------

    def _on_durable(self, events: Sequence[Event]) -> None:
        runs = self.state.runs
        router = self._router
        assert router is not None
        self.on_durable_batch(events)
        for event in events:
            run = runs.get(event.run_id)
            if run is None:
                continue
            kind = event.type
            if kind in ev.STREAM_EVENTS:  # not the run's history: the stream index places it
                self.state.streams.durable(event)
                continue
            run.positions.append(event.position)
            if kind in DELIVERED:
                router.deliver(run, event)
            if kind in ev.TERMINAL_EVENTS:
                if run.done is not None:
                    run.done.set()
                self.state.streams.ended(event.run_id)
            if kind == ev.WEBHOOK_RESPONDED:
                self.on_responded(event)
