"""The pure core: steps a workflow coroutine by hand, events in, commands out.

No I/O, no clock, no anyio. The machine runs the workflow's coroutines as *fibers* on its own
FIFO ready queue, so ``gather`` and ``first`` are deterministic: the same events in the same order
always produce the same commands in the same order. Time, randomness and ids come from the events
(or from injected functions, whose results are recorded), never from the scheduler.

Replay: the machine is given the run's recorded command events. Each durable call the workflow
makes is matched, by position and by its full description (kind, name, digest of arguments), with
the next recorded one; while recorded calls remain, nothing is emitted. Past them, calls become
commands for the driver. A mismatch fails the run with ``ReplayDivergenceError``.
"""

from __future__ import annotations

import hashlib
import random as _random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Protocol

from ...errors import (
    HookConflictError,
    HookTimeoutError,
    NonDeterministicAwaitError,
    ReplayDivergenceError,
    WorkflowDefinitionError,
)
from ..durations import parse_duration, resolve_deadline
from . import events as ev
from .commands import (
    CancelWait,
    CommandSink,
    CompleteRun,
    CreateHook,
    CreateWait,
    DisposeHook,
    FailRun,
    Respond,
    StartStep,
)
from .events import Event
from .ops import (
    DISPOSED,
    FirstOp,
    GatherOp,
    HookHandle,
    HookNextOp,
    Op,
    RespondOp,
    SleepOp,
    StepCall,
)

__all__ = [
    "MAX_TOKEN_LENGTH",
    "Codec",
    "HookState",
    "Machine",
    "clear_current_machine",
    "current_machine",
]

#: Longest hook token a workflow may choose (random tokens are 32 characters).
MAX_TOKEN_LENGTH = 1024

_current: ContextVar[Machine | None] = ContextVar("actorflow_machine", default=None)


def current_machine() -> Machine | None:
    """The machine whose workflow code is running now, if any."""
    return _current.get()


def clear_current_machine() -> None:
    """Forget the current machine in this context (for tasks spawned during a machine turn)."""
    _current.set(None)


class Codec(Protocol):
    def to_tree(self, value: object, root: str = "value") -> Any: ...
    def from_tree(self, tree: Any) -> Any: ...
    def error_to_tree(self, exc: BaseException) -> Any: ...
    def error_from_tree(self, tree: Any) -> BaseException: ...
    def digest(self, tree: Any) -> str: ...


class _Abort(BaseException):
    """Unwinds workflow code after a divergence; never reaches user ``except Exception``."""


_SEND, _THROW = 0, 1


class HookState:
    __slots__ = (
        "hook_id", "token", "metadata", "webhook", "buffer", "waiters", "disposed", "conflict",
        "fed", "expected",
    )  # fmt: skip

    def __init__(
        self, hook_id: str, token: str, metadata: Any, webhook: dict[str, Any] | None
    ) -> None:
        self.hook_id = hook_id
        self.token = token
        self.metadata = metadata
        self.webhook = webhook
        self.buffer: deque[Event] | None = None
        self.waiters: list[_Fiber] = []
        self.disposed = False
        self.conflict: HookConflictError | None = None
        #: Payloads fed so far, and (once disposed) how many the hook had accepted in all.
        self.fed = 0
        self.expected = 0

    @property
    def draining(self) -> bool:
        """Disposed, but payloads it accepted before the dispose are still on their way."""
        return self.disposed and self.fed < self.expected


class _Group:
    __slots__ = ("kind", "parent", "children", "results", "remaining", "done")

    def __init__(self, kind: str, parent: _Fiber, size: int) -> None:
        self.kind = kind
        self.parent = parent
        self.children: list[_Fiber] = []
        self.results: list[Any] = [None] * size
        self.remaining = size
        self.done = False


class _Fiber:
    __slots__ = ("coro", "group", "index", "blocked_on", "child_group", "finished")

    def __init__(self, coro: Coroutine[Any, Any, Any], group: _Group | None, index: int) -> None:
        self.coro = coro
        self.group = group
        self.index = index
        # What the fiber waits on: ("step", id) | ("wait", id) | ("hook", HookState) | ("group",)
        self.blocked_on: tuple[Any, ...] | None = None
        self.child_group: _Group | None = None
        self.finished = False


async def _await_one(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class Machine:
    """Steps one run's workflow coroutine. Synchronous; the actor drives it.

    ``sink`` carries out each command as it is emitted. ``recorded`` holds the run's command
    events in log order (empty for a new run).
    """

    # Slots and lazily created containers: one machine lives per resident run.
    __slots__ = (
        "run_id", "workflow_name", "started_at", "base_url", "now", "done", "_workflow",
        "_args", "_kwargs", "_sink", "_codec", "_new_id", "_new_token", "_recorded", "_pos",
        "_ready", "_steps", "_waits", "_hooks", "_root", "_fatal", "_rng", "_closing",
        "_calls", "_live_hooks", "max_calls", "max_hooks", "_probe", "_scope", "changed",
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
        sink: CommandSink,
        codec: Codec,
        new_id: Callable[[str], str],
        new_token: Callable[[int], str],
        recorded: Sequence[Event] = (),
        base_url: str | None = None,
        max_calls: int = 1_000_000,
        max_hooks: int = 10_000,
        scope_probe: Callable[[], object] | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow_name = workflow_name
        self.started_at = started_at
        self.base_url = base_url
        self.now = started_at
        self.done = False
        self._workflow = workflow
        self._args = args
        self._kwargs = kwargs
        self._sink = sink
        self._codec = codec
        self._new_id = new_id
        self._new_token = new_token
        self._recorded = recorded
        self._pos = 0
        self._ready: deque[tuple[_Fiber, int, Any]] | None = None
        self._steps: dict[str, _Fiber] = {}
        self._waits: dict[str, _Fiber] = {}
        self._hooks: dict[str, HookState] = {}
        self._root: _Fiber | None = None
        self._fatal: BaseException | None = None
        self._rng: _random.Random | None = None
        self._closing = False
        # Limits are enforced from the machine's own counts, so replay meets them at the same
        # call: a run over a limit fails the same way every time.
        self._calls = 0
        self._live_hooks = 0
        self.max_calls = max_calls
        self.max_hooks = max_hooks
        # Reports the driver's innermost cancel scope; a change while workflow code suspends
        # means the workflow entered an event-loop scope (see runtime/scope_probe.py).
        self._probe = scope_probe
        self._scope: object = None
        #: Hooks whose buffer of untaken payloads changed since the driver last looked.
        self.changed: set[HookState] | None = None

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

    def start(self) -> None:
        """Run the workflow from its beginning until every fiber is blocked."""
        try:
            coro = self._workflow(*self._args, **self._kwargs)
        except Exception as exc:  # the recorded arguments do not fit: the run fails, once
            self._fail(exc)
            return
        if not isinstance(coro, Coroutine):
            raise WorkflowDefinitionError(
                f"workflow {self.workflow_name!r} did not return a coroutine; "
                "decorate an `async def` with @af.workflow"
            )
        self._root = _Fiber(coro, None, 0)
        self._resume(self._root, _SEND, None)
        self._run()

    def feed(self, event: Event) -> None:
        """Apply one completion event (step result, hook payload, timer) and run what it wakes."""
        if self.done:
            return
        self.now = event.created_at
        kind = event.type
        corr = event.correlation_id
        if kind == ev.HOOK_RECEIVED:
            hook = self._hooks.get(corr or "")
            if hook is not None:
                hook.fed += 1
                if hook.waiters:
                    self._resume(hook.waiters.pop(0), _SEND, self._payload(hook, event))
                else:
                    if hook.buffer is None:
                        hook.buffer = deque()
                    hook.buffer.append(event)
                    self._changed(hook)
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

    def close(self) -> None:
        """Drop the coroutines (run cancelled or actor passivated); emits nothing."""
        self.done = True
        self._closing = True
        if self._root is not None and not self._root.finished:
            self._silent_close(self._root)
        self._ready = None

    # -- the fiber scheduler -----------------------------------------------------------------

    def _resume(self, fiber: _Fiber, mode: int, value: Any) -> None:
        fiber.blocked_on = None
        if self._ready is None:
            self._ready = deque()
        self._ready.append((fiber, mode, value))

    def _run(self) -> None:
        ready = self._ready
        if ready is None:
            return
        token = _current.set(self)
        if self._probe is not None:
            self._scope = self._probe()
        try:
            while ready and self._fatal is None and not self.done:
                fiber, mode, value = ready.popleft()
                if not fiber.finished:
                    try:
                        self._step(fiber, mode, value)
                    except _Abort:
                        pass
        finally:
            _current.reset(token)
            if self._ready is not None and not self._ready:
                self._ready = None
        if self._fatal is not None and not self.done:
            self._fail(self._fatal)

    def _step(self, fiber: _Fiber, mode: int, value: Any) -> None:
        coro = fiber.coro
        while True:
            try:
                op = coro.send(value) if mode == _SEND else coro.throw(value)
            except StopIteration as stop:
                self._finish(fiber, True, stop.value)
                return
            except _Abort:
                fiber.finished = True
                return
            except Exception as exc:
                self._finish(fiber, False, exc)
                return
            if self._fatal is not None:
                return
            # Foreign awaitables are named first (trio.sleep opens a scope of its own before it
            # yields); only an actorflow op awaited inside a changed scope gets the scope error.
            if self._probe is not None and isinstance(op, Op) and self._probe() is not self._scope:
                mode, value = (
                    _THROW,
                    WorkflowDefinitionError(
                        "a workflow awaited inside a cancel scope of the event loop "
                        "(anyio.move_on_after, fail_after, a trio or asyncio timeout); such scopes "
                        "cannot be suspended durably: use hook.wait(timeout=...) or "
                        "af.first(awaitable, af.sleep(...)) instead"
                    ),
                )
                continue
            try:
                outcome = self._issue(fiber, op)
            except _Abort:
                return
            except Exception as exc:  # an error the call raises at the await (bad argument...)
                mode, value = _THROW, exc
                continue
            if outcome is None:
                return
            mode, value = outcome

    def _finish(self, fiber: _Fiber, ok: bool, value: Any) -> None:
        fiber.finished = True
        fiber.blocked_on = None
        group = fiber.group
        if group is None:
            if ok:
                self._complete(value)
            else:
                self._fail(value)
            return
        if group.done:
            return
        if group.kind == "gather":
            if ok:
                group.results[fiber.index] = value
                group.remaining -= 1
                if group.remaining == 0:
                    group.done = True
                    group.parent.child_group = None
                    self._resume(group.parent, _SEND, group.results)
                return
            outcome: tuple[int, Any] = (_THROW, value)
        else:
            outcome = (_SEND, (fiber.index, value)) if ok else (_THROW, value)
        group.done = True
        for child in group.children:
            if child is not fiber and not child.finished:
                self._cancel(child)
        group.parent.child_group = None
        self._resume(group.parent, *outcome)

    def _cancel(self, fiber: _Fiber) -> None:
        """Withdraw a losing fiber: its hook payloads stay buffered, its timers are cancelled."""
        blocked = fiber.blocked_on
        fiber.blocked_on = None
        if blocked is not None:
            if blocked[0] == "hook":
                hook: HookState = blocked[1]
                try:
                    hook.waiters.remove(fiber)
                except ValueError:
                    pass
            elif blocked[0] == "wait":
                wait_id = blocked[1]
                if self._waits.pop(wait_id, None) is not None:
                    self._call(
                        "wait_cancel",
                        f"cancel {wait_id}",
                        lambda e: e.type == ev.WAIT_CANCELLED and e.correlation_id == wait_id,
                        lambda: self._sink(CancelWait(wait_id)),
                    )
            elif blocked[0] == "step":
                # A step already started cannot be unsent; its result is recorded and ignored.
                self._steps.pop(blocked[1], None)
        group = fiber.child_group
        if group is not None and not group.done:
            group.done = True
            for child in group.children:
                if not child.finished:
                    self._cancel(child)
        fiber.finished = True
        self._silent_close(fiber)

    def _silent_close(self, fiber: _Fiber) -> None:
        token = _current.set(self)
        try:
            fiber.coro.close()
        except (Exception, _Abort):
            # A workflow that awaits in a ``finally`` while being withdrawn cannot be resumed;
            # dropping it is the only deterministic choice.
            pass
        finally:
            _current.reset(token)
        fiber.finished = True

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
            return self._hook_next(fiber, op.hook)
        if isinstance(op, StepCall):
            return self._start_step(fiber, op)
        if isinstance(op, SleepOp):
            return self._sleep(fiber, op)
        if isinstance(op, GatherOp | FirstOp):
            return self._group(fiber, op)
        if isinstance(op, RespondOp):
            return self._respond(op)
        raise NonDeterministicAwaitError(_awaited_chain(fiber.coro, op))

    def _start_step(self, fiber: _Fiber, op: StepCall) -> tuple[int, Any] | None:
        tree = self._codec.to_tree({"args": list(op.args), "kwargs": op.kwargs}, root="args")
        digest = self._codec.digest(tree)
        new: list[str] = []

        def emit() -> None:
            step_id = self._new_id("step_")
            new.append(step_id)
            self._sink(StartStep(step_id, op.name, tree, digest, op.options))

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
            self._sink(CreateWait(wait_id, resume_at, purpose))

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

    def _group(self, fiber: _Fiber, op: GatherOp | FirstOp) -> tuple[int, Any] | None:
        kind = "gather" if isinstance(op, GatherOp) else "first"
        if not op.awaitables:
            if kind == "gather":
                return (_SEND, [])
            raise WorkflowDefinitionError("af.first() needs at least one awaitable")
        group = _Group(kind, fiber, len(op.awaitables))
        fiber.child_group = group
        fiber.blocked_on = ("group",)
        for index, awaitable in enumerate(op.awaitables):
            child = _Fiber(_await_one(awaitable), group, index)
            group.children.append(child)
            self._resume(child, _SEND, None)
        return None

    # -- hooks -------------------------------------------------------------------------------

    def create_hook(
        self,
        token: str | None,
        metadata: Any,
        webhook: dict[str, Any] | None = None,
        schema: str | None = None,
    ) -> HookHandle[Any]:
        """Create (or, on replay, re-create) a hook owned by this run."""
        if token is not None and (not isinstance(token, str) or not token):
            raise WorkflowDefinitionError(f"hook token must be a non-empty string, not {token!r}")
        if token is not None and len(token) > MAX_TOKEN_LENGTH:
            raise WorkflowDefinitionError(
                f"hook token is {len(token)} characters; the limit is {MAX_TOKEN_LENGTH}"
            )
        if self._live_hooks >= self.max_hooks:
            raise WorkflowDefinitionError(
                f"run {self.run_id} already has {self._live_hooks} live hooks; dispose some "
                "(hook.dispose() or `with hook:`) or raise Runtime(max_hooks_per_run=...)"
            )
        meta_tree = self._codec.to_tree(metadata, root="metadata")
        chosen = token is not None
        new: list[tuple[str, str, str | None]] = []

        def emit() -> None:
            hook_id = self._new_id("hook_")
            # The call's index is the same on every replay: a derived token then is too.
            tok = token if token is not None else self._new_token(self._calls)
            holder = self._sink(CreateHook(hook_id, tok, chosen, meta_tree, webhook, schema))
            new.append((hook_id, tok, holder))

        recorded = self._call(
            "webhook" if webhook is not None else "hook",
            f"token {token!r}" if chosen else "with a random token",
            lambda e: (
                e.type in (ev.HOOK_CREATED, ev.HOOK_CONFLICT)
                and bool(e.data.get("chosen")) == chosen
                and (not chosen or e.data.get("token") == token)
                and bool(e.data.get("webhook")) == (webhook is not None)
            ),
            emit,
        )
        if recorded is not None:
            assert recorded.correlation_id is not None
            hook_id, tok = recorded.correlation_id, str(recorded.data["token"])
            holder = recorded.data.get("holder") if recorded.type == ev.HOOK_CONFLICT else None
        else:
            hook_id, tok, holder = new[0]
        state = HookState(hook_id, tok, metadata, webhook)
        if holder is not None:
            state.conflict = HookConflictError(tok, str(holder))
            state.disposed = True
        else:
            self._hooks[hook_id] = state
            self._live_hooks += 1
        return HookHandle(state, self)

    def _hook_next(self, fiber: _Fiber, hook: HookState) -> tuple[int, Any] | None:
        if hook.conflict is not None:
            return (_THROW, hook.conflict)
        if hook.buffer:
            self._changed(hook)
            return (_SEND, self._payload(hook, hook.buffer.popleft()))
        if hook.disposed and not hook.draining:
            return (_SEND, DISPOSED)
        hook.waiters.append(fiber)
        fiber.blocked_on = ("hook", hook)
        return None

    def _changed(self, hook: HookState) -> None:
        if self.changed is None:
            self.changed = set()
        self.changed.add(hook)

    def take_changed(self) -> set[HookState]:
        """Hooks whose number of untaken payloads changed since the last call."""
        changed, self.changed = self.changed, None
        return changed or set()

    def _payload(self, hook: HookState, event: Event) -> Any:
        if hook.webhook is None:
            return self._codec.from_tree(event.data.get("payload"))
        from ..webhook_request import Request

        request = Request.from_data(self._codec.from_tree(event.data["request"]))
        if hook.webhook.get("respond_with") == "manual":

            async def respond(response: Any) -> None:
                await RespondOp(hook, event.event_id, response)

            object.__setattr__(request, "_respond", respond)
        return request

    def dispose_hook(self, hook: HookState) -> None:
        """Release a hook's token (idempotent)."""
        if hook.disposed:
            return
        # The hook stays known: a payload accepted before the dispose (durable, acknowledged)
        # may still be on its way, and is buffered rather than dropped.
        hook.disposed = True
        self._live_hooks -= 1
        answer: list[Any] = []
        recorded = self._call(
            "dispose",
            f"hook {hook.hook_id}",
            lambda e: e.type == ev.HOOK_DISPOSED and e.correlation_id == hook.hook_id,
            lambda: answer.append(self._sink(DisposeHook(hook.hook_id, hook.token))),
        )
        # Payloads accepted before the dispose (in log order) may not have reached the machine
        # yet; the dispose records how many the hook had accepted, and the hook drains up to
        # that count before it reports itself disposed, on replay exactly as live.
        received = recorded.data.get("received", 0) if recorded is not None else answer[0]
        hook.expected = int(received or 0)
        if not hook.draining:
            while hook.waiters:
                self._resume(hook.waiters.pop(0), _SEND, DISPOSED)

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
            lambda: self._sink(Respond(op.hook.hook_id, op.request_event_id, tree)),
        )
        return (_SEND, None)

    # -- the end of a run --------------------------------------------------------------------

    def _complete(self, value: Any) -> None:
        if self._pos < len(self._recorded):
            recorded = self._recorded[self._pos]
            self._fail(
                ReplayDivergenceError(
                    self.run_id, self._pos, _describe(recorded), "the workflow returning"
                )
            )
            return
        try:
            tree = self._codec.to_tree(value, root="result")
        except Exception as exc:
            self._fail(exc)
            return
        self.done = True
        self._sink(CompleteRun(tree))

    def _fail(self, exc: BaseException) -> None:
        if self.done:
            return
        self.done = True
        self._sink(FailRun(exc, self._codec.error_to_tree(exc)))
        self._ready = None

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
    return event.type
