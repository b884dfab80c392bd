"""The pure core: steps a workflow coroutine by hand, events in, commands out.

No I/O, no clock, no anyio. The machine runs the workflow's coroutines as *fibers* on its own
FIFO ready queue, so ``gather`` and ``first`` are deterministic: the same events in the same order
always produce the same commands in the same order. Time, randomness and ids come from the events
(or from injected functions, whose results are recorded), never from the scheduler.

Replay: the machine is given the run's recorded command events. Each durable call the workflow
makes is matched, by position and by its full description (kind, name, digest of arguments), with
the next recorded one; while recorded calls remain, nothing is emitted. Past them, calls become
commands for the driver. A mismatch fails the run with ``ReplayDivergenceError``, or, with
``on_divergence="park"``, parks it (``ParkRun``): the machine stops and emits nothing else, so the
run keeps its hooks, timers and history until code that fits them replays it again.

Patches (``af.patched(id)``, ``patches.py``) are durable calls too, matched by position.

The shape is h11's: ``start()``, ``feed(event)`` and ``answer(event)`` each return the commands
the workflow issued, and nothing is asked of the driver mid-turn. Two commands need an answer
before the workflow may go on: ``CreateHook`` (is the token free?) and ``DisposeHook`` (how many
payloads had the hook accepted?). The driver records each one's event and hands it back with
``answer``; until every such answer is in, the machine runs no other fiber (``awaiting``). The
workflow code between the call and its next suspension runs on at once, as before, so the order
of commands is the same whether the answer comes at once (one process) or after a round trip to
a shared database, and the same on replay, where the recorded event is the answer.
"""

from __future__ import annotations

import hashlib
import random as _random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from ...errors import (
    HookTimeoutError,
    NonDeterministicAwaitError,
    ReplayDivergenceError,
    WorkflowDefinitionError,
)
from ..durations import parse_duration, resolve_deadline
from . import events as ev
from .commands import (
    CancelStep,
    CancelWait,
    Command,
    CompleteRun,
    CreateWait,
    FailRun,
    ParkRun,
    Respond,
    StartStep,
)
from .events import Event
from .fibers import Abort as _Abort
from .fibers import Fiber as _Fiber
from .fibers import FiberScheduler, current
from .fibers import await_one as _await_one
from .hooks import MAX_TOKEN_LENGTH, Hooks, HookState
from .modes import DEFER as _DEFER
from .modes import SEND as _SEND
from .modes import THROW as _THROW
from .ops import (
    FirstOp,
    GatherOp,
    HookConflictOp,
    HookHandle,
    HookNextOp,
    RespondOp,
    SleepOp,
    StepCall,
    StreamOp,
)
from .patches import deprecate_patch, patched
from .stream_writes import stream_command

__all__ = [
    "MAX_TOKEN_LENGTH",
    "Codec",
    "DIVERGENCE_MODES",
    "HookState",
    "Machine",
    "clear_current_machine",
    "current_machine",
]


_current = current

#: What a divergence does to a run: end it (``"fail"``) or keep it waiting (``"park"``).
DIVERGENCE_MODES = ("park", "fail")


def current_machine() -> Machine | None:
    """The machine whose workflow code is running now, if any."""
    machine: Machine | None = _current.get()
    return machine


def clear_current_machine() -> None:
    """Forget the current machine in this context (for tasks spawned during a machine turn)."""
    _current.set(None)


class Codec(Protocol):
    def to_tree(self, value: object, root: str = "value") -> Any: ...
    def from_tree(self, tree: Any) -> Any: ...
    def error_to_tree(self, exc: BaseException) -> Any: ...
    def error_from_tree(self, tree: Any) -> BaseException: ...
    def digest(self, tree: Any) -> str: ...


class Machine(FiberScheduler):
    """Steps one run's workflow coroutine. Synchronous; the actor drives it.

    Each driving call returns the commands issued meanwhile. ``recorded`` holds the run's
    command events in log order (empty for a new run).
    """

    # Slots and lazily created containers: one machine lives per resident run.
    __slots__ = (
        "run_id", "workflow_name", "started_at", "base_url", "now", "_workflow",
        "_args", "_kwargs", "_out", "_codec", "_new_id", "_new_token", "_recorded", "_pos",
        "_steps", "_waits", "hooks", "_rng", "_closing", "_calls", "max_calls", "_parks",
        "_patches", "_writes",
    )  # fmt: skip

    def __init__(
        self,
        *,
        run_id: str,
        workflow_name: str,
        workflow: Callable[..., Coroutine[Any, Any, Any]],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        started_at: float,
        codec: Codec,
        new_id: Callable[[str], str],
        new_token: Callable[[int], str],
        recorded: Sequence[Event] = (),
        base_url: str | None = None,
        max_calls: int = 1_000_000,
        max_hooks: int = 10_000,
        scope_probe: Callable[[], object] | None = None,
        on_divergence: str = "fail",
    ) -> None:
        super().__init__(scope_probe)
        if on_divergence not in DIVERGENCE_MODES:
            raise WorkflowDefinitionError(
                f'on_divergence must be "park" or "fail", not {on_divergence!r}'
            )
        self.run_id = run_id
        self.workflow_name = workflow_name
        self.started_at = started_at
        self.base_url = base_url
        self.now = started_at
        self._workflow = workflow
        self._args = args
        self._kwargs = kwargs
        self._out: list[Command] | None = None
        self._codec = codec
        self._new_id = new_id
        self._new_token = new_token
        self._recorded = recorded
        self._pos = 0
        self._steps: dict[str, _Fiber] = {}
        self._waits: dict[str, _Fiber] = {}
        self._rng: _random.Random | None = None
        self._closing = False
        # Limits are enforced from the machine's own counts, so replay meets them at the same
        # call: a run over a limit fails the same way every time.
        self._calls = 0
        self.max_calls = max_calls
        #: Writes so far per stream namespace (``None``: the run has written nothing).
        self._writes: dict[str, int] | None = None
        self.hooks = Hooks(max_hooks)
        self._parks = on_divergence == "park"
        #: patch id -> the answer ``patched`` gave (made on first use).
        self._patches: dict[str, bool] | None = None

    @property
    def rng(self) -> _random.Random:
        """The run's deterministic random generator (seeded by the run id; made on first use)."""
        if self._rng is None:
            seed = int.from_bytes(hashlib.blake2b(self.run_id.encode(), digest_size=8).digest())
            self._rng = _random.Random(seed)
        return self._rng

    # -- driving -----------------------------------------------------------------------------

    @property
    def replaying(self) -> bool:
        """True while recorded calls remain to be matched."""
        return self._pos < len(self._recorded)

    @property
    def awaiting(self) -> bool:
        """True while a command waits for its answer (``answer``); feed nothing meanwhile."""
        return bool(self.hooks.unanswered)

    def _emit(self, command: Command) -> None:
        out = self._out
        if out is None:
            self._out = [command]
        else:
            out.append(command)

    def _take_out(self) -> list[Command]:
        out, self._out = self._out, None
        return out if out is not None else []

    def start(self) -> list[Command]:
        """Run the workflow from its beginning until every fiber is blocked; the commands."""
        try:
            coro = self._workflow(*self._args, **self._kwargs)
        except Exception as exc:  # the recorded arguments do not fit: the run fails, once
            self._fail(exc)
            return self._take_out()
        if not isinstance(coro, Coroutine):
            raise WorkflowDefinitionError(
                f"workflow {self.workflow_name!r} did not return a coroutine; "
                "decorate an `async def` with @af.workflow"
            )
        self._root = _Fiber(coro, None, 0)
        self._resume(self._root, _SEND, None)
        self._run()
        return self._take_out()

    def answer(self, event: Event) -> list[Command]:
        """The driver's answer to ``CreateHook`` (its ``hook_created`` or ``hook_conflict``
        event) or ``DisposeHook`` (its ``hook_disposed``); runs what it wakes; the commands."""
        if not self.done:
            self.hooks.answer(self, event)
        if self._ready is None:
            return self._take_out()
        self._run()
        return self._take_out()

    def feed(self, event: Event) -> list[Command]:
        """Apply one completion event (step result, hook payload, timer) and run what it wakes;
        the commands issued."""
        if self.done:
            return self._take_out()
        assert not self.hooks.unanswered, "fed while a command waits for its answer"
        self.now = event.created_at
        kind = event.type
        corr = event.correlation_id
        if kind == ev.HOOK_RECEIVED:
            self.hooks.receive(self, event)
        elif kind == ev.STEP_COMPLETED:
            fiber = self._steps.pop(corr or "", None)
            if fiber is not None:
                self._resume(fiber, _SEND, self._codec.from_tree(event.data.get("result")))
        elif kind == ev.STEP_FAILED:
            fiber = self._steps.pop(corr or "", None)
            if fiber is not None:
                self._resume(fiber, _THROW, self._codec.error_from_tree(event.data["error"]))
        elif kind == ev.WAIT_COMPLETED:
            fiber = self._waits.pop(corr or "", None)
            if fiber is not None:
                self._resume(fiber, _SEND, None)
        self._run()
        return self._take_out()

    def close(self) -> None:
        """Drop the coroutines (run cancelled or actor passivated); emits nothing."""
        self.done = True
        self._closing = True
        if self._root is not None and not self._root.finished:
            self._silent_close(self._root)
        self._ready = None

    # -- withdrawn and deferred fibers ------------------------------------------------------

    def _withdraw(self, fiber: _Fiber, blocked: tuple[Any, ...]) -> None:
        """A losing fiber's hook payloads stay buffered; its timer is cancelled."""
        if blocked[0] in ("hook", "claim", "ask"):
            self.hooks.withdraw(fiber, blocked[1])
        elif blocked[0] == "wait":
            wait_id = blocked[1]
            if self._waits.pop(wait_id, None) is not None:
                self._call(
                    "wait_cancel",
                    f"cancel {wait_id}",
                    lambda e: e.type == ev.WAIT_CANCELLED and e.correlation_id == wait_id,
                    lambda: self._emit(CancelWait(wait_id)),
                )
        elif blocked[0] == "step":
            # The step is told to stop; if it finished meanwhile, its result is ignored.
            if self._steps.pop(blocked[1], None) is not None and not self._closing:
                self._emit(CancelStep(blocked[1]))

    def _release(self, fiber: _Fiber, value: Any) -> tuple[int, Any] | None:
        return self.hooks.release(fiber, value)

    # -- durable calls -----------------------------------------------------------------------

    def _call(
        self,
        kind: str,
        description: str,
        matches: Callable[[Event], bool],
        emit: Callable[[], Any],
    ) -> Event | None:
        """Match the next recorded call, or emit a new one. Returns the recorded event if any."""
        if self._closing:
            raise _Abort  # passivation and cancellation emit nothing
        self._calls += 1
        if self._calls > self.max_calls:
            self._fatal = WorkflowDefinitionError(
                f"run {self.run_id} made more than {self.max_calls} durable calls; split the work "
                "into child runs or raise Runtime(max_calls_per_run=...)"
            )
            raise _Abort
        if self._pos < len(self._recorded):
            recorded = self._recorded[self._pos]
            if not matches(recorded):
                err = ReplayDivergenceError(
                    self.run_id, self._pos, _describe(recorded), f"{kind} {description}"
                )
                self._fatal = err
                raise _Abort
            self._pos += 1
            return recorded
        emit()
        return None

    def _issue(self, fiber: _Fiber, op: Any) -> tuple[int, Any] | None:
        if isinstance(op, HookNextOp):
            return self.hooks.next(self, fiber, op.hook)
        if isinstance(op, StepCall):
            return self._start_step(fiber, op)
        if isinstance(op, SleepOp):
            return self._sleep(fiber, op)
        if isinstance(op, GatherOp | FirstOp):
            return self._group(fiber, op)
        if isinstance(op, RespondOp):
            return self._respond(op)
        if isinstance(op, StreamOp):
            return self._stream(op)
        if isinstance(op, HookConflictOp):
            return self.hooks.conflict_of(fiber, op.hook)
        raise NonDeterministicAwaitError(_awaited_chain(fiber.coro, op))

    def _start_step(self, fiber: _Fiber, op: StepCall) -> tuple[int, Any] | None:
        tree = self._codec.to_tree({"args": list(op.args), "kwargs": op.kwargs}, root="args")
        digest = self._codec.digest(tree)
        new: list[str] = []

        def emit() -> None:
            step_id = self._new_id("step_")
            new.append(step_id)
            self._emit(StartStep(step_id, op.name, tree, digest, op.options))

        recorded = self._call(
            "step",
            f"{op.name} (args digest {digest})",
            lambda e: (
                e.type == ev.STEP_STARTED
                and e.data.get("name") == op.name
                and e.data.get("digest") == digest
            ),
            emit,
        )
        step_id = recorded.correlation_id if recorded is not None else new[0]
        assert step_id is not None
        self._steps[step_id] = fiber
        fiber.blocked_on = ("step", step_id)
        return None

    def _sleep(self, fiber: _Fiber, op: SleepOp) -> tuple[int, Any] | None:
        resume_at = resolve_deadline(op.until, self.now)
        wait_id = self._create_wait(resume_at, op.purpose)
        self._waits[wait_id] = fiber
        fiber.blocked_on = ("wait", wait_id)
        return None

    def _create_wait(self, resume_at: float, purpose: str) -> str:
        new: list[str] = []

        def emit() -> None:
            wait_id = self._new_id("wait_")
            new.append(wait_id)
            self._emit(CreateWait(wait_id, resume_at, purpose))

        recorded = self._call(
            "wait",
            f"{purpose} until {_iso(resume_at)}",
            lambda e: (
                e.type == ev.WAIT_CREATED
                and e.data.get("purpose") == purpose
                and abs(float(e.data.get("resume_at", -1)) - resume_at) < 1e-3
            ),
            emit,
        )
        wait_id = recorded.correlation_id if recorded is not None else new[0]
        assert wait_id is not None
        return wait_id

    # -- patches -----------------------------------------------------------------------------

    def patched(self, patch_id: str) -> bool:
        """True where the run takes the new branch of patch ``patch_id`` (see ``patches.py``)."""
        return patched(self, patch_id)

    def deprecate_patch(self, patch_id: str) -> None:
        """Match patch ``patch_id``'s marker where the history has one here; record nothing."""
        deprecate_patch(self, patch_id)

    # -- hooks -------------------------------------------------------------------------------

    def create_hook(
        self,
        token: str | None,
        metadata: Any,
        webhook: dict[str, Any] | None = None,
        schema: str | None = None,
    ) -> HookHandle[Any]:
        """Create (or, on replay, re-create) a hook owned by this run."""
        return HookHandle(self.hooks.create(self, token, metadata, webhook, schema), self)

    def dispose_hook(self, hook: HookState) -> None:
        """Release a hook's token (idempotent)."""
        self.hooks.dispose(self, hook)

    def take_changed(self) -> set[HookState]:
        """Hooks whose number of untaken payloads changed since the last call."""
        return self.hooks.take_changed()

    def _payload(self, hook: HookState, event: Event) -> Any:
        """What awaiting the hook gives the workflow: the payload, or a webhook's request."""
        if hook.webhook is None:
            return self._codec.from_tree(event.data.get("payload"))
        from ..webhook_request import Request

        request = Request.from_data(self._codec.from_tree(event.data["request"]))
        if hook.webhook.get("respond_with") == "manual":

            async def respond(response: Any) -> None:
                await RespondOp(hook, event.event_id, response)

            object.__setattr__(request, "_respond", respond)
        return request

    def _defer(self, fiber: _Fiber, hook: HookState) -> None:
        if self._ready is None:
            self._ready = deque()
        self._ready.append((fiber, _DEFER, hook))

    async def _hook_wait_timeout(self, handle: HookHandle[Any], timeout: Any) -> Any:
        seconds = parse_duration(timeout)
        index, value = await FirstOp((handle, SleepOp(seconds, "timeout")))
        if index == 1:
            raise HookTimeoutError(handle.token, seconds)
        return value

    def hook_wait_with_timeout(self, handle: HookHandle[Any], timeout: Any) -> Awaitable[Any]:
        return self._hook_wait_timeout(handle, timeout)

    def _respond(self, op: RespondOp) -> tuple[int, Any] | None:
        tree = self._codec.to_tree(op.response.to_data(), root="response")
        self._call(
            "respond",
            f"to request {op.request_event_id}",
            lambda e: (
                e.type == ev.WEBHOOK_RESPONDED
                and e.correlation_id == op.hook.hook_id
                and e.data.get("request_event_id") == op.request_event_id
            ),
            lambda: self._emit(Respond(op.hook.hook_id, op.request_event_id, tree)),
        )
        return (_SEND, None)

    # -- streams -----------------------------------------------------------------------------

    def _stream(self, op: StreamOp) -> tuple[int, Any] | None:
        """A write or close, numbered per namespace (see ``stream_writes.py``)."""
        if self._closing:
            raise _Abort
        if self._writes is None:
            self._writes = {}
        self._emit(stream_command(self._writes, op, self.run_id, self._codec))
        return (_SEND, None)

    # -- the end of a run --------------------------------------------------------------------

    def _complete(self, value: Any) -> None:
        if self._pos < len(self._recorded):
            recorded = self._recorded[self._pos]
            self._fatal = ReplayDivergenceError(
                self.run_id, self._pos, _describe(recorded), "the workflow returning"
            )
            self._fail(self._fatal)
            return
        try:
            tree = self._codec.to_tree(value, root="result")
        except Exception as exc:
            self._fail(exc)
            return
        self.done = True
        self._emit(CompleteRun(tree))

    def _fail(self, exc: BaseException) -> None:
        if self.done:
            return
        self.done = True
        self._ready = None
        if self._parks and exc is self._fatal and isinstance(exc, ReplayDivergenceError):
            # Only the machine's own finding parks (``_fatal``): an error the workflow raised
            # fails the run whatever its class.
            self._emit(ParkRun(exc.position, exc.expected, exc.got, str(exc)))
            return
        self._emit(FailRun(exc, self._codec.error_to_tree(exc)))

    # -- deterministic helpers ---------------------------------------------------------------

    def now_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)


def _awaited_chain(coro: Any, yielded: Any) -> str:
    """What the workflow awaited, as ``helper() -> asyncio.sleep()`` (the loop's trap last)."""
    names: list[str] = []
    awaited = getattr(coro, "cr_await", None)
    while awaited is not None and len(names) < 16:
        code = getattr(awaited, "cr_code", None) or getattr(awaited, "gi_code", None)
        if code is not None:
            if code is not _await_one.__code__:
                frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
                module = frame.f_globals.get("__name__", "") if frame is not None else ""
                qualname = getattr(awaited, "__qualname__", code.co_name)
                names.append(f"{module + '.' if module else ''}{qualname}()")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        else:
            names.append(repr(awaited))
            break
    if not names:
        return repr(yielded)
    return f"{' -> '.join(names)} (which yielded {yielded!r} to the event loop)"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _describe(event: Event) -> str:
    data = event.data
    if event.type == ev.STEP_STARTED:
        return f"step {data.get('name')} (args digest {data.get('digest')})"
    if event.type in (ev.HOOK_CREATED, ev.HOOK_CONFLICT):
        kind = "webhook" if data.get("webhook") else "hook"
        if data.get("chosen"):
            return f"{kind} token {data.get('token')!r}"
        return f"{kind} with a random token"
    if event.type == ev.WAIT_CREATED:
        return f"wait {data.get('purpose')} until {_iso(float(data.get('resume_at', 0)))}"
    if event.type == ev.WAIT_CANCELLED:
        return f"wait_cancel cancel {event.correlation_id}"
    if event.type == ev.HOOK_DISPOSED:
        return f"dispose hook {event.correlation_id}"
    if event.type == ev.WEBHOOK_RESPONDED:
        return f"respond to request {data.get('request_event_id')}"
    if event.type == ev.PATCH_MARKED:
        return f"patch {data.get('patch')!r}"
    return event.type
