"""The runtime that ``actorflow.api`` and typed hooks act on: the innermost open one."""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any, Protocol

from ..errors import WorkflowError

__all__ = ["OutsideApi", "current", "enter", "leave"]


class OutsideApi(Protocol):
    """What code outside a workflow may call on the current runtime (see ``Runtime``)."""

    async def resume_hook(self, token_or_hook: Any, payload: Any, **options: Any) -> Any: ...


_current: ContextVar[Any] = ContextVar("actorflow_runtime", default=None)
_open: list[Any] = []


def current() -> Any:
    """The runtime that outside calls act on.

    Raises:
        WorkflowError: no runtime is open.
    """
    rt = _current.get()
    if rt is None and _open:
        rt = _open[-1]
    if rt is None:
        raise WorkflowError(
            "no actorflow Runtime is running; call this inside `async with af.Runtime(...)`"
        )
    return rt


def enter(rt: Any) -> Token[Any]:
    _open.append(rt)
    return _current.set(rt)


def leave(rt: Any, token: Token[Any] | None) -> None:
    if rt in _open:
        _open.remove(rt)
    if token is not None:
        try:
            _current.reset(token)
        except ValueError:  # exited from another context: nothing to restore there
            _current.set(None)
