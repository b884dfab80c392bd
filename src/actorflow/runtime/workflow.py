"""The programming model: decorators and the primitives workflow code calls.

Inside a workflow, every function here acts on the machine that is stepping the workflow (found
through a context variable the machine sets while it runs workflow code). Called anywhere else,
the workflow-only functions raise ``WorkflowDefinitionError`` saying where they belong.
"""

from __future__ import annotations

import functools
import inspect
import uuid
import warnings
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

from ..errors import WorkflowDefinitionError
from .core.machine import Machine, current_machine
from .core.ops import FirstOp, GatherOp, HookHandle, SleepOp, StepCall, StepOptions
from .webhook_request import Response

__all__ = [
    "StepFunction",
    "StepMetadata",
    "WorkflowFunction",
    "WorkflowMetadata",
    "create_hook",
    "UnstableNameWarning",
    "create_webhook",
    "deprecate_patch",
    "first",
    "gather",
    "get_step_metadata",
    "get_workflow_metadata",
    "now",
    "patched",
    "random",
    "sleep",
    "step",
    "uuid4",
    "workflow",
]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class WorkflowMetadata:
    """About the run whose code is running: ``run_id``, ``workflow_name``, ``started_at``, ``url``."""

    run_id: str
    workflow_name: str
    started_at: datetime
    url: str | None


class StepSignal:
    """Set when the step is told to stop (its run cancelled, its branch lost a ``first``)."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False


@dataclass(frozen=True, slots=True)
class StepMetadata:
    """About the step attempt running now. ``step_id`` is stable across retries.

    ``cancelled`` turns true when the step is told to stop: its run was cancelled or its
    awaiter lost a ``first``. The step's task is cancelled at its next ``await`` as well; the
    flag is for work between awaits (a loop over CPU-bound items) or under a shielded scope.
    """

    step_id: str
    attempt: int
    started_at: datetime
    signal: StepSignal = field(default_factory=StepSignal, repr=False, compare=False)

    @property
    def cancelled(self) -> bool:
        return self.signal.cancelled


#: Set by the step executor around each attempt.
step_context: ContextVar[tuple[StepMetadata, WorkflowMetadata] | None] = ContextVar(
    "actorflow_step", default=None
)

_steps: dict[str, StepFunction[..., Any]] = {}


class WorkflowFunction(Generic[P, R]):
    """An ``async def`` marked with ``@af.workflow``; start it with ``Runtime.start``."""

    def __init__(self, fn: Callable[P, Coroutine[Any, Any, R]], name: str) -> None:
        self.fn = fn
        self.name = name
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<workflow {self.name}>"


class StepFunction(Generic[P, R]):
    """An ``async def`` marked with ``@af.step``: durable inside a workflow, plain outside."""

    def __init__(
        self, fn: Callable[P, Coroutine[Any, Any, R]], name: str, max_retries: int
    ) -> None:
        self.fn = fn
        self.name = name
        self.options = StepOptions(max_retries=max_retries)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        if current_machine() is None:
            return self.fn(*args, **kwargs)
        return StepCall(self.name, args, dict(kwargs), self.options)

    def __repr__(self) -> str:
        return f"<step {self.name}>"


class UnstableNameWarning(UserWarning):
    """A step's default name depends on a module run as ``__main__`` (see ``step``)."""


def _check_async(fn: Callable[..., Any], what: str) -> None:
    if not inspect.iscoroutinefunction(fn):
        raise WorkflowDefinitionError(f"@af.{what} decorates an `async def`, not {fn!r}")


@overload
def workflow(fn: Callable[P, Coroutine[Any, Any, R]], /) -> WorkflowFunction[P, R]: ...
@overload
def workflow(
    *, name: str | None = None
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], WorkflowFunction[P, R]]: ...
def workflow(fn: Any = None, /, *, name: str | None = None) -> Any:
    """Mark an ``async def`` as a workflow. Its code must be deterministic.

    Its identity is ``name``, recorded in every run it starts and looked up on recovery; the
    default is the function's ``__name__`` (not its module, so moving it keeps its runs).

    Raises:
        WorkflowDefinitionError: ``fn`` is not an ``async def``.
    """

    def wrap(f: Callable[P, Coroutine[Any, Any, R]]) -> WorkflowFunction[P, R]:
        _check_async(f, "workflow")
        return WorkflowFunction(f, name or f.__name__)

    return wrap(fn) if fn is not None else wrap


@overload
def step(fn: Callable[P, Coroutine[Any, Any, R]], /) -> StepFunction[P, R]: ...
@overload
def step(
    *, max_retries: int = 3, name: str | None = None
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], StepFunction[P, R]]: ...
def step(fn: Any = None, /, *, max_retries: int = 3, name: str | None = None) -> Any:
    """Mark an ``async def`` as a step: retried I/O whose result is recorded once.

    ``max_retries=3`` means up to 4 attempts. Its identity is ``name``, recorded with every
    call and matched on replay; the default is ``module.qualname``, so moving or renaming the
    function's module changes it (and parks the runs that called it under the old name):
    give ``name=`` to steps that may move. A default name under ``__main__`` warns
    (``UnstableNameWarning``): the same code imported as a module gets another name.

    Raises:
        WorkflowDefinitionError: not an ``async def``, a negative ``max_retries``, or a name
            already used by another step.
    """
    if max_retries < 0:
        raise WorkflowDefinitionError(f"max_retries must be 0 or more, not {max_retries}")

    def wrap(f: Callable[P, Coroutine[Any, Any, R]]) -> StepFunction[P, R]:
        _check_async(f, "step")
        step_name = name or f"{f.__module__}.{f.__qualname__}"
        if name is None and f.__module__ == "__main__":
            warnings.warn(
                f"step {f.__qualname__} is named {step_name!r} after the script it is defined "
                "in; imported as a module it would get another name and runs that called it "
                "would no longer match their history: give it @af.step(name=...)",
                UnstableNameWarning,
                stacklevel=3 if fn is not None else 2,
            )
        existing = _steps.get(step_name)
        if existing is not None and existing.fn.__code__ is not f.__code__:
            raise WorkflowDefinitionError(
                f"two steps are named {step_name!r}; give one of them another name= "
                "(the name is recorded in the log and finds the step again on recovery)"
            )
        wrapped = StepFunction(f, step_name, max_retries)
        _steps[step_name] = wrapped
        return wrapped

    return wrap(fn) if fn is not None else wrap


def find_step(name: str) -> StepFunction[..., Any] | None:
    """The step registered under ``name`` (for re-running a started step after recovery)."""
    return _steps.get(name)


def _machine(what: str) -> Machine:
    machine = current_machine()
    if machine is None:
        raise WorkflowDefinitionError(
            f"af.{what}() works only inside a workflow function (one decorated with @af.workflow)"
        )
    return machine


def sleep(duration: float | timedelta | str | datetime) -> Awaitable[None]:
    """A durable sleep: ``5``, ``timedelta``, ``"90s"``/``"2h"``/``"7d"``, or an aware datetime.

    Survives restarts; a sleep that came due while the process was down fires at the next start.

    Raises:
        WorkflowDefinitionError: outside a workflow, or not a duration.
    """
    _machine("sleep")
    return SleepOp(duration)


def now() -> datetime:
    """The workflow's deterministic time (the time of the event being processed), aware UTC."""
    return _machine("now").now_datetime()


def random() -> float:
    """A deterministic random float in [0, 1), seeded per run."""
    return _machine("random").rng.random()


def uuid4() -> uuid.UUID:
    """A deterministic random UUID, the same on every replay."""
    return _machine("uuid4").uuid4()


def create_hook(token: str | None = None, metadata: Any = None) -> HookHandle[Any]:
    """Create a hook owned by this run, resumable with ``resume_hook(token, payload)``.

    ``token`` may be chosen (e.g. ``f"approval:{order_id}"``) or left out for a random one.
    Registered at once: when this returns, outside resumes find it.

    Raises:
        WorkflowDefinitionError: outside a workflow, or an empty token.
        HookConflictError: (when awaited) another live hook held the token.
    """
    return _machine("create_hook").create_hook(token, metadata)


def create_webhook(
    respond_with: Response | Literal["manual"] | None = None,
    *,
    verify: Callable[..., None] | None = None,
    respond_timeout: float = 30.0,
    token: None = None,
    metadata: Any = None,
) -> HookHandle[Any]:
    """Create a hook resumable over HTTP at ``webhook.url``; its token is always random.

    ``metadata`` is stored with it (encrypted when encryption is on), as ``create_hook``'s: the
    workflow reads it as ``webhook.metadata``, outside callers in ``get_hook_by_token``.

    Raises:
        WorkflowDefinitionError: a token was passed, or ``respond_with`` is not valid.
    """
    machine = _machine("create_webhook")
    if token is not None:
        raise WorkflowDefinitionError(
            "create_webhook() takes no token: webhook tokens are always random so that the "
            "public URL cannot be guessed; use create_hook(token=...) for a chosen token"
        )
    if (
        respond_with is not None
        and respond_with != "manual"
        and not isinstance(respond_with, Response)
    ):
        raise WorkflowDefinitionError(
            f'respond_with must be None, an af.Response or "manual", not {respond_with!r}'
        )
    options: dict[str, Any] = {"respond_timeout": float(respond_timeout)}
    if respond_with == "manual":
        options["respond_with"] = "manual"
    elif isinstance(respond_with, Response):
        options["respond_with"] = "static"
        from . import codec

        options["response"] = codec.to_tree(respond_with.to_data(), root="respond_with")
    from .webhook_handle import attach_verifier

    attach_verifier(options, verify)
    return machine.create_hook(None, metadata, webhook=options)


def patched(patch_id: str) -> bool:
    """Branch between old and new code deterministically: ``if af.patched("id"): new()``.

    The first call in a run, past its recorded history, records a marker and answers True;
    replaying a run that recorded the marker here answers True again; a run that started
    before the patch (its history has something else here) answers False. The answer holds for
    the rest of the run.

    Raises:
        WorkflowDefinitionError: outside a workflow, or ``patch_id`` is not a non-empty string.
    """
    return _machine("patched").patched(_patch_id(patch_id))


def deprecate_patch(patch_id: str) -> None:
    """Mark patch ``patch_id`` whose old branch is gone: keep the new code unconditionally.

    Runs that recorded the marker match it here; runs started since record none. Remove the
    call once no run that recorded the marker is left.

    Raises:
        WorkflowDefinitionError: outside a workflow, or ``patch_id`` is not a non-empty string.
    """
    _machine("deprecate_patch").deprecate_patch(_patch_id(patch_id))


def _patch_id(patch_id: object) -> str:
    if not isinstance(patch_id, str) or not patch_id:
        raise WorkflowDefinitionError(f"a patch id is a non-empty string, not {patch_id!r}")
    return patch_id


def gather(*awaitables: Awaitable[Any]) -> Awaitable[list[Any]]:
    """Run steps, hooks and sleeps concurrently; results in order; the first failure propagates."""
    _machine("gather")
    return GatherOp(awaitables)


def first(*awaitables: Awaitable[Any]) -> Awaitable[tuple[int, Any]]:
    """Race: ``(index, value)`` of the first to finish; the others are withdrawn cleanly."""
    _machine("first")
    return FirstOp(awaitables)


def get_workflow_metadata() -> WorkflowMetadata:
    """About the current run, in a workflow or in a step.

    Raises:
        WorkflowDefinitionError: outside workflows and steps.
    """
    machine = current_machine()
    if machine is not None:
        from datetime import UTC

        url = machine.base_url
        return WorkflowMetadata(
            machine.run_id,
            machine.workflow_name,
            datetime.fromtimestamp(machine.started_at, UTC),
            url,
        )
    ctx = step_context.get()
    if ctx is None:
        raise WorkflowDefinitionError(
            "af.get_workflow_metadata() works only inside a workflow or a step"
        )
    return ctx[1]


def get_step_metadata() -> StepMetadata:
    """About the step attempt running now (``step_id`` is the idempotency key for side effects).

    Raises:
        WorkflowDefinitionError: outside a step.
    """
    ctx = step_context.get()
    if ctx is None:
        raise WorkflowDefinitionError("af.get_step_metadata() works only inside a running step")
    return ctx[0]
