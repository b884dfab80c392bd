"""Fibers: a workflow's coroutines, stepped by hand on one FIFO ready queue.

``FiberScheduler`` is the mechanics the machine builds on: resuming a fiber with a value or an
exception, running ready fibers in order until all are blocked, ``gather`` and ``first`` groups,
and withdrawing the losers of a race. What a fiber may await, and what blocking on it means, is
the machine's (``machine.py``): it answers ``_issue`` and undoes a withdrawn wait in
``_withdraw``. Pure: no I/O, no clock, no event loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from typing import Any

from ...errors import WorkflowDefinitionError
from .modes import DEFER, SEND, THROW
from .ops import FirstOp, GatherOp, Op

__all__ = ["DEFER", "SEND", "THROW", "Abort", "Fiber", "FiberScheduler", "Group", "current"]

#: The machine whose workflow code is running (what ``af.create_hook`` and friends act on).
current: ContextVar[Any] = ContextVar("actorflow_machine", default=None)


class Abort(BaseException):
    """Unwinds workflow code after a divergence; never reaches user ``except Exception``."""


class Group:
    __slots__ = ("kind", "parent", "children", "results", "remaining", "done")

    def __init__(self, kind: str, parent: Fiber, size: int) -> None:
        self.kind = kind
        self.parent = parent
        self.children: list[Fiber] = []
        self.results: list[Any] = [None] * size
        self.remaining = size
        self.done = False


class Fiber:
    __slots__ = ("coro", "group", "index", "blocked_on", "child_group", "finished")

    def __init__(self, coro: Coroutine[Any, Any, Any], group: Group | None, index: int) -> None:
        self.coro = coro
        self.group = group
        self.index = index
        # What the fiber waits on: ("step", id) | ("wait", id) | ("hook", HookState) | ("group",)
        self.blocked_on: tuple[Any, ...] | None = None
        self.child_group: Group | None = None
        self.finished = False


async def await_one(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class FiberScheduler:
    """Runs fibers; a subclass says what they await (``_issue``) and how a run ends."""

    __slots__ = ("done", "held", "_ready", "_root", "_fatal", "_probe", "_scope")

    def __init__(self, scope_probe: Callable[[], object] | None) -> None:
        self.done = False
        #: No fiber may run: the driver owes an answer (set and cleared by the subclass).
        self.held = False
        self._ready: deque[tuple[Fiber, int, Any]] | None = None
        self._root: Fiber | None = None
        self._fatal: BaseException | None = None
        # Reports the driver's innermost cancel scope; a change while workflow code suspends
        # means the workflow entered an event-loop scope (see runtime/scope_probe.py).
        self._probe = scope_probe
        self._scope: object = None

    # -- what a subclass decides ---------------------------------------------------------------

    def _issue(self, fiber: Fiber, op: Any) -> tuple[int, Any] | None:
        """Handle what ``fiber`` awaited: ``(mode, value)`` to go on at once, ``None`` to block."""
        raise NotImplementedError

    def _complete(self, value: Any) -> None:
        raise NotImplementedError

    def _fail(self, exc: BaseException) -> None:
        raise NotImplementedError

    def _release(self, fiber: Fiber, value: Any) -> tuple[int, Any] | None:
        """A deferred resume (``DEFER``) comes up: how to resume ``fiber``, or ``None``."""
        raise NotImplementedError

    def _withdraw(self, fiber: Fiber, blocked: tuple[Any, ...]) -> None:
        """Undo what a withdrawn fiber was blocked on."""

    # -- the scheduler ---------------------------------------------------------------------------

    def _resume(self, fiber: Fiber, mode: int, value: Any) -> None:
        fiber.blocked_on = None
        if self._ready is None:
            self._ready = deque()
        self._ready.append((fiber, mode, value))

    def _ready_first(self, fiber: Fiber, mode: int, value: Any) -> None:
        if self._ready is None:
            self._ready = deque()
        self._ready.appendleft((fiber, mode, value))

    def _run(self) -> None:
        ready = self._ready
        if ready is None:
            return
        token = current.set(self)
        if self._probe is not None:
            self._scope = self._probe()
        try:
            while ready and self._fatal is None and not self.done and not self.held:
                fiber, mode, value = ready.popleft()
                if mode == DEFER:
                    released = self._release(fiber, value)
                    if released is None:
                        continue
                    mode, value = released
                if not fiber.finished:
                    try:
                        self._step(fiber, mode, value)
                    except Abort:
                        pass
        finally:
            current.reset(token)
            ready = self._ready
            if ready is not None and not ready:
                self._ready = None
        if self._fatal is not None and not self.done:
            self._fail(self._fatal)

    def _step(self, fiber: Fiber, mode: int, value: Any) -> None:
        coro = fiber.coro
        while True:
            try:
                op = coro.send(value) if mode == SEND else coro.throw(value)
            except StopIteration as stop:
                self._finish(fiber, True, stop.value)
                return
            except Abort:
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
                    THROW,
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
            except Abort:
                return
            except Exception as exc:  # an error the call raises at the await (bad argument...)
                mode, value = THROW, exc
                continue
            if outcome is None:
                return
            mode, value = outcome

    def _finish(self, fiber: Fiber, ok: bool, value: Any) -> None:
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
                    self._resume(group.parent, SEND, group.results)
                return
            outcome: tuple[int, Any] = (THROW, value)
        else:
            outcome = (SEND, (fiber.index, value)) if ok else (THROW, value)
        group.done = True
        for child in group.children:
            if child is not fiber and not child.finished:
                self._cancel(child)
        group.parent.child_group = None
        self._resume(group.parent, *outcome)

    def _cancel(self, fiber: Fiber) -> None:
        """Withdraw a losing fiber (``_withdraw`` undoes what it was blocked on)."""
        blocked = fiber.blocked_on
        fiber.blocked_on = None
        if blocked is not None:
            self._withdraw(fiber, blocked)
        group = fiber.child_group
        if group is not None and not group.done:
            group.done = True
            for child in group.children:
                if not child.finished:
                    self._cancel(child)
        fiber.finished = True
        self._silent_close(fiber)

    def _silent_close(self, fiber: Fiber) -> None:
        token = current.set(self)
        try:
            fiber.coro.close()
        except (Exception, Abort):
            # A workflow that awaits in a ``finally`` while being withdrawn cannot be resumed;
            # dropping it is the only deterministic choice.
            pass
        finally:
            current.reset(token)
        fiber.finished = True

    def _group(self, fiber: Fiber, op: GatherOp | FirstOp) -> tuple[int, Any] | None:
        kind = "gather" if isinstance(op, GatherOp) else "first"
        if not op.awaitables:
            if kind == "gather":
                return (SEND, [])
            raise WorkflowDefinitionError("af.first() needs at least one awaitable")
        group = Group(kind, fiber, len(op.awaitables))
        fiber.child_group = group
        fiber.blocked_on = ("group",)
        for index, awaitable in enumerate(op.awaitables):
            child = Fiber(await_one(awaitable), group, index)
            group.children.append(child)
            self._resume(child, SEND, None)
        return None
