"""Patches: ``af.patched(id)`` and ``af.deprecate_patch(id)``, durable calls of the machine.

Past the recorded history, the first ``patched(id)`` of a run records a marker (``MarkPatch``,
the ``patch_marked`` event) and answers True. On replay, a recorded marker of that id at this
position is consumed and answers True; anything else answers False and is left for the next
call to match (the run started before the patch existed, and its history holds the old code's
call here). Either answer holds for the rest of the run, so every ``patched(id)`` of one run
agrees. ``deprecate_patch(id)`` consumes a marker of that id where the history has one here and
records nothing, so runs that took the new branch and runs started since both replay.

Pure, like the rest of the core: the machine's position in its history is the only input.
"""

from __future__ import annotations

from typing import Any, Protocol

from . import events as ev
from .commands import Command, MarkPatch
from .fibers import Abort

__all__ = ["PatchHost", "deprecate_patch", "patched"]


class PatchHost(Protocol):
    """The machine, as patches use it."""

    _recorded: Any
    _pos: int
    _calls: int
    _closing: bool
    _patches: dict[str, bool] | None

    def _emit(self, command: Command) -> None: ...


def _marker_here(m: PatchHost, patch_id: str) -> bool:
    recorded = m._recorded[m._pos]
    return bool(recorded.type == ev.PATCH_MARKED and recorded.data.get("patch") == patch_id)


def patched(m: PatchHost, patch_id: str) -> bool:
    """True where the run takes the new branch of patch ``patch_id``."""
    answers = m._patches
    if answers is None:
        answers = m._patches = {}
    known = answers.get(patch_id)
    if known is not None:
        return known
    if m._closing:
        raise Abort  # passivation and cancellation emit nothing
    if m._pos < len(m._recorded):
        answer = _marker_here(m, patch_id)
        if answer:
            m._calls += 1
            m._pos += 1
    else:
        m._calls += 1
        m._emit(MarkPatch(patch_id))
        answer = True
    answers[patch_id] = answer
    return answer


def deprecate_patch(m: PatchHost, patch_id: str) -> None:
    """Consume patch ``patch_id``'s marker where the history has one here; record nothing."""
    if m._closing:
        raise Abort
    if m._pos < len(m._recorded) and _marker_here(m, patch_id):
        m._calls += 1
        m._pos += 1
