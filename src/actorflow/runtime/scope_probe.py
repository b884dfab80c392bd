"""Tell whether workflow code entered a cancel scope of the event loop and stayed in it.

Workflow coroutines are stepped inside the dispatcher's task, so a scope a workflow enters
(``anyio.move_on_after``, ``fail_after``, a trio scope) would become the *dispatcher's* scope
and outlive the turn: its deadline would cancel the dispatcher, and exiting two such scopes out
of order corrupts the task's scope stack. The machine calls this probe whenever the workflow
yields; if the innermost scope differs from the one at the start of the turn, it raises into the
workflow at that point, so the scope is exited there by the exception, in order, as Python's
``with`` does. The probe reads the backend's own record of the current scope; nothing is changed.
"""

from __future__ import annotations

from collections.abc import Callable

import sniffio

__all__ = ["cancel_scope_probe"]


def _none() -> object:
    return None


def cancel_scope_probe() -> Callable[[], object]:
    """A function returning a marker of the current task's innermost cancel scope."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return _none
    if library == "trio":
        import trio

        def trio_probe() -> object:
            return trio.lowlevel.current_task()._cancel_status

        return trio_probe
    if library == "asyncio":
        import asyncio

        try:
            from anyio._backends._asyncio import _task_states
        except ImportError:  # another anyio layout: no probe rather than a wrong one
            return _none

        def asyncio_probe() -> object:
            state = _task_states.get(asyncio.current_task())  # type: ignore[arg-type]
            return None if state is None else state.cancel_scope

        return asyncio_probe
    return _none
