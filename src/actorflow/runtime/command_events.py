"""What event each of the machine's commands becomes: one pure function, shared by the actor
and by the tests that drive the machine by hand.

Two commands are decided by the driver first: ``CreateHook`` (``holder``: the run already
holding the token, or ``None``) and ``DisposeHook`` (``received``: how many payloads the hook had
accepted). Their events are then handed back to the machine as its answers.
"""

from __future__ import annotations

from typing import Any

from .core import events as ev
from .core.commands import (
    CancelWait,
    Command,
    CompleteRun,
    CreateHook,
    CreateWait,
    DisposeHook,
    FailRun,
    MarkPatch,
    ParkRun,
    Respond,
    StartStep,
)

__all__ = ["ANSWERED", "divergence_data", "event_of"]

#: Commands whose events go back to the machine (``Machine.answer``).
ANSWERED = (CreateHook, DisposeHook)


def divergence_data(command: ParkRun) -> dict[str, Any]:
    """The data of the ``run_parked`` event of a divergence (plain: no user value)."""
    return {
        "reason": "divergence",
        "position": command.position,
        "recorded": command.recorded,
        "attempted": command.attempted,
        "message": command.message,
    }


def event_of(
    command: Command, *, holder: str | None = None, received: int = 0
) -> tuple[str, str | None, dict[str, Any]]:
    """The type, correlation id and data of the event that records ``command``."""
    kind = type(command)
    if kind is CompleteRun:
        assert isinstance(command, CompleteRun)
        return ev.RUN_COMPLETED, None, {"result": command.result}
    if kind is StartStep:
        assert isinstance(command, StartStep)
        return ev.STEP_STARTED, command.step_id, {
            "name": command.name, "args": command.args, "digest": command.digest,
            "max_retries": command.options.max_retries,
        }  # fmt: skip
    if kind is CreateHook:
        assert isinstance(command, CreateHook)
        data: dict[str, Any] = {"token": command.token, "chosen": command.chosen}
        if holder is not None:
            data["holder"] = holder
            data["webhook"] = command.webhook is not None
            return ev.HOOK_CONFLICT, command.hook_id, data
        data["metadata"] = command.metadata
        data["webhook"] = command.webhook
        if command.schema is not None:
            data["schema"] = command.schema
        return ev.HOOK_CREATED, command.hook_id, data
    if kind is DisposeHook:
        assert isinstance(command, DisposeHook)
        return ev.HOOK_DISPOSED, command.hook_id, {"token": command.token, "received": received}
    if kind is CreateWait:
        assert isinstance(command, CreateWait)
        return ev.WAIT_CREATED, command.wait_id, {
            "resume_at": command.resume_at, "purpose": command.purpose,
        }  # fmt: skip
    if kind is CancelWait:
        assert isinstance(command, CancelWait)
        return ev.WAIT_CANCELLED, command.wait_id, {}
    if kind is Respond:
        assert isinstance(command, Respond)
        return ev.WEBHOOK_RESPONDED, command.hook_id, {
            "request_event_id": command.request_event_id, "response": command.response,
        }  # fmt: skip
    if kind is FailRun:
        assert isinstance(command, FailRun)
        return ev.RUN_FAILED, None, {"error": command.error_tree}
    if kind is MarkPatch:
        assert isinstance(command, MarkPatch)
        return ev.PATCH_MARKED, None, {"patch": command.patch_id}
    if kind is ParkRun:
        assert isinstance(command, ParkRun)
        return ev.RUN_PARKED, None, divergence_data(command)
    raise AssertionError(f"unknown command {command!r}")
