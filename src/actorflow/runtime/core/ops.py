"""What workflow code awaits: the operations a workflow coroutine yields to the machine.

Every actorflow primitive is an awaitable whose ``__await__`` yields exactly one operation object
and receives its outcome. The machine recognises these objects and nothing else: anything else a
workflow yields (an asyncio future, a trio trap) is refused with
:class:`~actorflow.errors.NonDeterministicAwaitError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ...errors import WorkflowDefinitionError
from .commands import StepOptions
from .hooks import DISPOSED, HookState

if TYPE_CHECKING:
    pass

__all__ = [
    "DISPOSED",
    "FirstOp",
    "GatherOp",
    "HookConflictOp",
    "HookHandle",
    "HookNextOp",
    "Op",
    "RespondOp",
    "SleepOp",
    "StepCall",
    "StepOptions",
    "StreamOp",
    "WEBHOOK_PATH",
]

T = TypeVar("T")

#: Where a webhook's token sits in its public URL (the route ``actorflow.http`` serves).
WEBHOOK_PATH = "/.well-known/workflow/v1/webhook/"


class Op:
    """Base of the objects a workflow coroutine yields."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self)


class StepCall(Op):
    """One durable call of a step; issued when awaited."""

    __slots__ = ("name", "args", "kwargs", "options")

    def __init__(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: StepOptions
    ) -> None:
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.options = options

    def __repr__(self) -> str:
        return f"<step {self.name}>"


class SleepOp(Op):
    """A durable timer: ``until`` is a duration or an aware datetime."""

    __slots__ = ("until", "purpose")

    def __init__(self, until: Any, purpose: str = "sleep") -> None:
        self.until = until
        self.purpose = purpose

    def __repr__(self) -> str:
        return f"<sleep {self.until!r}>"


class HookNextOp(Op):
    """The next payload of a hook (``DISPOSED`` once it is disposed and drained)."""

    __slots__ = ("hook",)

    def __init__(self, hook: HookState) -> None:
        self.hook = hook


class GatherOp(Op):
    __slots__ = ("awaitables",)

    def __init__(self, awaitables: tuple[Awaitable[Any], ...]) -> None:
        self.awaitables = awaitables


class FirstOp(Op):
    __slots__ = ("awaitables",)

    def __init__(self, awaitables: tuple[Awaitable[Any], ...]) -> None:
        self.awaitables = awaitables


class RespondOp(Op):
    """A manual webhook's answer to one request (durable: never sent twice)."""

    __slots__ = ("hook", "request_event_id", "response")

    def __init__(self, hook: HookState, request_event_id: str, response: Any) -> None:
        self.hook = hook
        self.request_event_id = request_event_id
        self.response = response


class HookConflictOp(Op):
    """``await hook.get_conflict()``: the run holding the hook's token instead, or ``None``."""

    __slots__ = ("hook",)

    def __init__(self, hook: HookState) -> None:
        self.hook = hook


class StreamOp(Op):
    """A workflow's write to (or close of) one of its run's streams; never blocks the fiber."""

    __slots__ = ("namespace", "chunk", "close")

    def __init__(self, namespace: str, chunk: Any, close: bool = False) -> None:
        self.namespace = namespace
        self.chunk = chunk
        self.close = close

    def __repr__(self) -> str:
        return f"<stream {'close' if self.close else 'write'} {self.namespace!r}>"


class HookOwner(Protocol):
    """The machine, as a hook handle uses it."""

    base_url: str | None

    def dispose_hook(self, hook: HookState) -> None: ...

    def hook_wait_with_timeout(self, handle: HookHandle[Any], timeout: Any) -> Awaitable[Any]: ...


@dataclass(eq=False, slots=True)
class HookHandle(Generic[T]):
    """A hook as workflow code holds it: await it, iterate it, dispose it.

    Created by ``af.create_hook`` inside a workflow; users never construct it.
    """

    _state: HookState
    _machine: HookOwner = field(repr=False)

    @property
    def token(self) -> str:
        """The token outside callers resume this hook with."""
        return self._state.token

    @property
    def hook_id(self) -> str:
        return self._state.hook_id

    @property
    def url(self) -> str:
        """A webhook's public URL: ``<base url>/.well-known/workflow/v1/webhook/<token>``.

        Raises:
            WorkflowDefinitionError: this is a plain hook (only webhooks are reachable over
                HTTP), or the runtime has no base URL (``Runtime(base_url=...)``, or
                ``actorflow serve``, which defaults it to the address it binds).
        """
        if self._state.webhook is None:
            raise WorkflowDefinitionError(
                f"hook {self._state.hook_id} is a plain hook, which has no URL; create it with "
                "af.create_webhook() to receive HTTP requests, or resume it with resume_hook()"
            )
        base = self._machine.base_url
        if not base:
            raise WorkflowDefinitionError(
                "webhook.url needs the runtime's base URL: pass Runtime(base_url="
                '"https://host") or serve with `actorflow serve --base-url URL`'
            )
        return f"{base.rstrip('/')}{WEBHOOK_PATH}{self._state.token}"

    @property
    def metadata(self) -> Any:
        return self._state.metadata

    def get_conflict(self) -> Awaitable[str | None]:
        """The id of the run whose live hook holds this hook's token, or ``None``, without
        awaiting a payload: for "claim ``order:{id}``; if another run holds it, branch".

        The answer is recorded (``hook_created`` or ``hook_conflict``), so replay agrees.
        """
        return HookConflictOp(self._state)

    @property
    def has_conflict(self) -> bool:
        """Whether another run's hook holds the token (a webhook's random token never is).

        Raises:
            WorkflowDefinitionError: a chosen token whose claim is not answered yet (in a
                cluster the claim takes a round trip); ``await hook.get_conflict()`` instead.
        """
        state = self._state
        if state.conflict is None and state.webhook is None and state.unanswered:
            raise WorkflowDefinitionError(
                f"whether token {state.token!r} conflicts is not known yet; "
                "use `await hook.get_conflict()`"
            )
        return state.conflict is not None

    def __await__(self) -> Generator[Any, Any, T]:
        value = yield HookNextOp(self._state)
        if value is DISPOSED:
            raise WorkflowDefinitionError(
                f"hook {self._state.token!r} was disposed; nothing more will arrive on it"
            )
        return value  # type: ignore[no-any-return]

    def wait(self, timeout: Any = None) -> Awaitable[T]:
        """The next payload; with ``timeout``, raises ``HookTimeoutError`` when it passes first.

        Raises:
            HookTimeoutError: the (durable) timeout passed before a payload arrived.
            HookConflictError: the token was held by another live hook at creation.
        """
        if timeout is None:
            return self
        return self._machine.hook_wait_with_timeout(self, timeout)

    def __aiter__(self) -> HookHandle[T]:
        return self

    def __anext__(self) -> Awaitable[T]:
        return _HookAnext(self._state)

    def dispose(self) -> None:
        """Release the token now; later resumes get ``HookNotFoundError``."""
        self._machine.dispose_hook(self._state)

    def __enter__(self) -> HookHandle[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.dispose()


class _HookAnext(Op):
    __slots__ = ("hook",)

    def __init__(self, hook: HookState) -> None:
        self.hook = hook

    def __await__(self) -> Generator[Any, Any, Any]:
        value = yield HookNextOp(self.hook)
        if value is DISPOSED:
            raise StopAsyncIteration
        return value
