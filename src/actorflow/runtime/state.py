"""What the log implies, kept in memory: runs, the token index, timers, pending steps.

One function, ``State.apply``, folds an event into this state. The runtime calls it for every
event it submits (in submission order, which is log order) and, at start, for every event of the
log, so the live state and the recovered state cannot drift apart.

User values in the state stay in their stored form (codec trees or encrypted envelopes) and are
decoded only when asked for.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .core import events as ev
from .core.events import Event
from .run_index import RunIndex
from .stream_index import StreamIndex

__all__ = ["HookEntry", "IdempotencyEntry", "PendingStep", "RunState", "State", "Timer"]

#: Legal run status changes (lifecycle as data). Anything else is a bug in the caller.
RUN_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "completed", "failed", "cancelled"}),
    "running": frozenset({"completed", "failed", "cancelled"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})

# What a ``RunState.keys`` entry indexes.
_START_KEY = 0
_DELIVERY_KEY = 1
_RESPONSE = 2

_STATUS_OF = {
    ev.RUN_STARTED: "running",
    ev.RUN_COMPLETED: "completed",
    ev.RUN_FAILED: "failed",
    ev.RUN_CANCELLED: "cancelled",
}


class RunState:
    """One run as the log describes it. Small on purpose: one exists for every run."""

    __slots__ = (
        "run_id", "workflow_name", "status", "created_at", "positions", "hooks", "terminal",
        "actor", "done", "external", "pending", "submitted", "started_at", "version", "parked",
        "keys",
    )  # fmt: skip

    def __init__(self, run_id: str, workflow_name: str, created_at: float) -> None:
        self.run_id = run_id
        self.workflow_name = workflow_name
        self.status = "pending"
        self.created_at = created_at
        #: Where the run's events sit in the log, in order (filled in once written). Packed
        #: into an ``array`` when the run ends: 8 bytes per event instead of an int object.
        self.positions: list[int] | array[int] = []
        #: Events submitted for the run; more than ``len(positions)`` while some are unwritten.
        self.submitted = 0
        #: Tokens of the run's live hooks (released when the run ends).
        self.hooks: list[str] | None = None
        self.terminal: Event | None = None
        #: The run's actor while it exists (see ``actor.py``); ``None`` when never woken.
        self.actor: Any = None
        #: Set once the terminal event is durable (created lazily by waiters).
        self.done: Any = None
        #: Admitted outside messages not yet delivered (they hold mailbox slots).
        self.external = 0
        #: Ids of the run's live timers and started steps (void when the run ends).
        self.pending: list[str] | None = None
        #: When ``run_started`` was recorded (``None`` before); the end is ``terminal``'s time.
        self.started_at: float | None = None
        #: The version the run was started under (``run_created``'s ``"version"``), if any.
        self.version: str | None = None
        #: The ``run_parked`` event while the run is parked (the code does not fit it).
        self.parked: Event | None = None
        #: What indexes outside ``runs`` hold of this run (its start key, delivery keys, manual
        #: webhook responses), so that retention can remove them without a scan.
        self.keys: list[tuple[int, str, str]] | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def ended_at(self) -> float | None:
        """When the run ended (its terminal event's time), or ``None`` while it has not."""
        return None if self.terminal is None else self.terminal.created_at

    def _keep(self, index: int, key: str, token: str = "") -> None:
        if self.keys is None:
            self.keys = []
        self.keys.append((index, key, token))


class HookEntry:
    """A live hook in the token index."""

    __slots__ = (
        "hook_id", "run_id", "token", "created_at", "metadata", "webhook", "verifier", "schema",
        "received", "untaken", "remote", "record",
    )  # fmt: skip

    def __init__(
        self,
        hook_id: str,
        run_id: str,
        token: str,
        created_at: float,
        metadata: Any,
        webhook: dict[str, Any] | None,
    ) -> None:
        self.hook_id = hook_id
        self.run_id = run_id
        self.token = token
        self.created_at = created_at
        self.metadata = metadata  # stored form
        self.webhook = webhook
        self.verifier: Callable[..., None] | None = None  # loaded on first use
        self.schema: str | None = None  # a typed hook's schema (import path)
        self.received = 0  # hook_received events accepted so far
        self.untaken = 0  # fed to the workflow's hook, not yet taken (kept when passivated)
        #: Set on an entry read from the shared PostgreSQL index: the hook of another node's run.
        self.remote: Any = None
        #: The outside's record of this hook, made on first use (``Front.hook_record``).
        self.record: Any = None


@dataclass(slots=True)
class IdempotencyEntry:
    digest: str
    hook_id: str
    run_id: str
    token: str
    event_id: str
    #: The hook it was delivered to (kept after the hook is gone, to answer retries).
    hook: HookEntry | None = None


@dataclass(slots=True)
class PendingStep:
    step_id: str
    run_id: str
    name: str
    args: Any  # stored form
    max_retries: int
    started_at: float
    attempt: int = 1
    retry_at: float = 0.0


@dataclass(slots=True)
class Timer:
    wait_id: str
    run_id: str
    resume_at: float
    purpose: str = "sleep"  # or "timeout" (a hook's wait)


class State:
    """The fold of the log."""

    def __init__(self) -> None:
        self.runs: dict[str, RunState] = {}
        self.tokens: dict[str, HookEntry] = {}
        self.idempotency: dict[tuple[str, str], IdempotencyEntry] = {}
        self.steps: dict[str, PendingStep] = {}
        self.timers: dict[str, Timer] = {}
        #: request event id -> its ``webhook_responded`` event (manual webhook responses).
        self.responses: dict[str, Event] = {}
        #: idempotency key of a start -> the run it started.
        self.start_keys: dict[str, str] = {}
        #: Where each run's stream chunks sit in the log (``stream_index.py``).
        self.streams = StreamIndex()
        self.events = 0
        #: Run ids sorted for listing (built on the first listing, see ``run_index.py``).
        self.index = RunIndex()
        #: Ended runs in the order they ended, for retention (see ``expire``).
        self.ended: deque[RunState] = deque()
        #: Runs removed by retention since this state was built.
        self.expired = 0

    def apply(self, event: Event) -> None:
        """Fold one event in. Events of unknown runs (other than ``run_created``) are ignored."""
        self.events += 1
        kind = event.type
        if kind == ev.RUN_CREATED:
            created = self.runs[event.run_id] = RunState(
                event.run_id, str(event.data.get("workflow")), event.created_at
            )
            version = event.data.get("version")
            if version is not None:
                created.version = str(version)
            if self.index.built:  # checked here: recovery folds a million runs past it
                self.index.added(created)
            key = event.data.get("idempotency_key")
            if key is not None:
                self.start_keys[str(key)] = event.run_id
                self.runs[event.run_id]._keep(_START_KEY, str(key))
            return
        run = self.runs.get(event.run_id)
        if run is None:
            return
        new = _STATUS_OF.get(kind)
        if new is not None:
            if new in RUN_TRANSITIONS[run.status]:
                if self.index.built:
                    self.index.moved(run.run_id, run.status, new)
                run.status = new
                if new == "running":
                    run.started_at = event.created_at
                if new in TERMINAL_STATUSES:
                    run.terminal = event
                    self._release(run)
                    self.ended.append(run)
            return
        if run.status in TERMINAL_STATUSES:
            return  # late events of an ended run (a step that finished after a cancel)
        # One method per event type, found by a dict lookup: recovery folds millions of events.
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(self, run, event, event.correlation_id or "", event.data)

    def _hook_created(self, run: RunState, event: Event, corr: str, data: dict[str, Any]) -> None:
        token = str(data["token"])
        entry = HookEntry(
            corr, run.run_id, token, event.created_at, data.get("metadata"), data.get("webhook")
        )
        entry.schema = data.get("schema")
        self.tokens[token] = entry
        if run.hooks is None:
            run.hooks = []
        run.hooks.append(token)

    def _hook_disposed(self, run: RunState, event: Event, corr: str, data: dict[str, Any]) -> None:
        token = str(data.get("token"))
        entry = self.tokens.get(token)
        if entry is not None and entry.hook_id == corr:
            del self.tokens[token]
            if run.hooks is not None and token in run.hooks:
                run.hooks.remove(token)

    def _hook_received(self, run: RunState, event: Event, corr: str, data: dict[str, Any]) -> None:
        token = str(data.get("token"))
        live = self.tokens.get(token)
        if live is not None and live.hook_id == corr:
            live.received += 1
        key = data.get("idempotency_key")
        if key is not None:
            self.idempotency[(token, str(key))] = IdempotencyEntry(
                str(data.get("digest")), corr, run.run_id, token, event.event_id, live
            )
            run._keep(_DELIVERY_KEY, str(key), token)

    def _wait_created(self, run: RunState, event: Event, corr: str, data: dict[str, Any]) -> None:
        self.timers[corr] = Timer(
            corr, run.run_id, float(data["resume_at"]), str(data.get("purpose", "sleep"))
        )
        self._own(run, corr)

    def _wait_ended(self, run: RunState, event: Event, corr: str, data: dict[str, Any]) -> None:
        self.timers.pop(corr, None)

    def _step_started(self, run: RunState, event: Event, corr: str, data: dict[str, Any]) -> None:
        self.steps[corr] = PendingStep(
            corr, run.run_id, str(data["name"]), data.get("args"),
            int(data.get("max_retries", 3)), event.created_at,
        )  # fmt: skip
        self._own(run, corr)

    def _step_retrying(self, run: RunState, event: Event, corr: str, data: dict[str, Any]) -> None:
        step = self.steps.get(corr)
        if step is not None:
            step.attempt = int(data["attempt"]) + 1
            step.retry_at = float(data["retry_at"])

    def _step_ended(self, run: RunState, event: Event, corr: str, data: dict[str, Any]) -> None:
        self.steps.pop(corr, None)

    def _responded(self, run: RunState, event: Event, corr: str, data: dict[str, Any]) -> None:
        self.responses[str(data["request_event_id"])] = event
        run._keep(_RESPONSE, str(data["request_event_id"]))

    def _parked(self, run: RunState, event: Event, corr: str, data: dict[str, Any]) -> None:
        run.parked = event

    def _unparked(self, run: RunState, event: Event, corr: str, data: dict[str, Any]) -> None:
        run.parked = None

    def _stream(self, run: RunState, event: Event, corr: str, data: dict[str, Any]) -> None:
        self.streams.apply(event)

    _handlers: dict[str, Callable[[State, RunState, Event, str, dict[str, Any]], None]] = {
        ev.HOOK_CREATED: _hook_created,
        ev.HOOK_DISPOSED: _hook_disposed,
        ev.HOOK_RECEIVED: _hook_received,
        ev.WAIT_CREATED: _wait_created,
        ev.WAIT_COMPLETED: _wait_ended,
        ev.WAIT_CANCELLED: _wait_ended,
        ev.STEP_STARTED: _step_started,
        ev.STEP_RETRYING: _step_retrying,
        ev.STEP_COMPLETED: _step_ended,
        ev.STEP_FAILED: _step_ended,
        ev.STEP_CANCELLED: _step_ended,
        ev.WEBHOOK_RESPONDED: _responded,
        ev.RUN_PARKED: _parked,
        ev.RUN_UNPARKED: _unparked,
        ev.STREAM_CHUNK: _stream,
        ev.STREAM_CLOSED: _stream,
    }

    def _release(self, run: RunState) -> None:
        """A run ended: its tokens are free, its timers and steps are void."""
        for token in run.hooks or ():
            entry = self.tokens.get(token)
            if entry is not None and entry.run_id == run.run_id:
                del self.tokens[token]
        run.hooks = None
        run.parked = None
        for pending_id in run.pending or ():
            self.timers.pop(pending_id, None)
            self.steps.pop(pending_id, None)
        run.pending = None
        if isinstance(run.positions, list):
            run.positions = array("q", run.positions)

    def expire(self, ended_before: float) -> list[RunState]:
        """Remove the runs that ended before ``ended_before``, with everything kept for them.

        Returns the removed runs. Their start keys, delivery keys and manual webhook responses
        go with them: a retry after retention is a new request, as with any idempotency window.
        """
        gone: list[RunState] = []
        ended = self.ended
        while ended:
            run = ended[0]
            end = run.ended_at
            if end is not None and end >= ended_before:
                break
            ended.popleft()
            if self.runs.get(run.run_id) is run:
                self.forget(run.run_id)
                gone.append(run)
        self.expired += len(gone)
        return gone

    def forget(self, run_id: str) -> None:
        """Drop a run and what other indexes hold of it: its listing entry, streams, start key,
        delivery keys and webhook responses (retention)."""
        run = self.runs.pop(run_id, None)
        self.index.drop(run_id)
        self.streams.runs.pop(run_id, None)
        if run is None:
            return
        for index, key, token in run.keys or ():
            if index == _START_KEY:
                if self.start_keys.get(key) == run.run_id:
                    del self.start_keys[key]
            elif index == _RESPONSE:
                self.responses.pop(key, None)
            else:
                entry = self.idempotency.get((token, key))
                if entry is not None and entry.run_id == run.run_id:
                    del self.idempotency[(token, key)]
        run.keys = None

    def _own(self, run: RunState, pending_id: str) -> None:
        if run.pending is None:
            run.pending = []
        elif len(run.pending) >= 64:
            # Keep the list short for long runs: drop ids that already completed.
            run.pending = [p for p in run.pending if p in self.timers or p in self.steps]
        run.pending.append(pending_id)
