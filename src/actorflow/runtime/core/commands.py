"""Commands: what the machine asks its driver (the actor) to do, each becoming one event.

The driver handles each command synchronously, as the machine emits it, and answers only
``CreateHook`` (with the id of a run that already holds the token, or ``None``). That keeps hook
registration eager: once ``create_hook`` returns inside the workflow, the token resolves outside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "StepOptions",
    "CancelWait",
    "Command",
    "CommandSink",
    "CompleteRun",
    "CreateHook",
    "CreateWait",
    "DisposeHook",
    "FailRun",
    "MarkPatch",
    "ParkRun",
    "Respond",
    "StartStep",
    "WriteChunk",
    "CloseStream",
    "CancelStep",
]


@dataclass(frozen=True, slots=True)
class StepOptions:
    """How a step is retried."""

    max_retries: int = 3


@dataclass(frozen=True, slots=True)
class StartStep:
    step_id: str
    name: str
    args: Any  # codec tree of {"args": [...], "kwargs": {...}}
    digest: str
    options: StepOptions


@dataclass(frozen=True, slots=True)
class CreateHook:
    hook_id: str
    token: str
    chosen: bool  # the workflow chose the token (else it is random)
    metadata: Any  # codec tree
    webhook: dict[str, Any] | None  # webhook options (respond_with, verify), None for a hook
    schema: str | None = None  # import path of a typed hook's payload schema


@dataclass(frozen=True, slots=True)
class DisposeHook:
    hook_id: str
    token: str


@dataclass(frozen=True, slots=True)
class CreateWait:
    wait_id: str
    resume_at: float  # epoch seconds
    purpose: str  # "sleep" or "timeout"


@dataclass(frozen=True, slots=True)
class CancelWait:
    wait_id: str


@dataclass(frozen=True, slots=True)
class Respond:
    hook_id: str
    request_event_id: str
    response: Any  # codec tree of the response data


@dataclass(frozen=True, slots=True)
class CancelStep:
    """Stop a started step whose awaiter lost a ``first`` (re-issued on replay: the driver
    records ``step_cancelled`` only while the step has no outcome yet)."""

    step_id: str


@dataclass(frozen=True, slots=True)
class WriteChunk:
    """The workflow's ``seq``-th write to stream ``namespace`` (re-issued on replay: the driver
    appends it only if the run's log does not hold it yet)."""

    namespace: str
    seq: int
    chunk: Any  # codec tree


@dataclass(frozen=True, slots=True)
class CloseStream:
    namespace: str


@dataclass(frozen=True, slots=True)
class CompleteRun:
    result: Any  # codec tree


@dataclass(frozen=True, slots=True)
class FailRun:
    error: BaseException
    error_tree: Any


@dataclass(frozen=True, slots=True)
class MarkPatch:
    """``af.patched(patch_id)`` ran for the first time past the history: the new branch."""

    patch_id: str


@dataclass(frozen=True, slots=True)
class ParkRun:
    """The code no longer fits the history at durable call ``position``: keep the run, stop it.

    Plain descriptions only (names, digests, kinds): never a user value.
    """

    position: int
    recorded: str
    attempted: str
    message: str


Command = (
    StartStep
    | CreateHook
    | DisposeHook
    | CreateWait
    | CancelWait
    | Respond
    | CompleteRun
    | FailRun
    | MarkPatch
    | ParkRun
    | WriteChunk
    | CloseStream
    | CancelStep
)


class CommandSink(Protocol):
    def __call__(self, command: Command) -> Any:
        """Carry out ``command``. ``CreateHook``: the id of the run holding the token, or None.

        ``DisposeHook``: how many payloads the hook had accepted (its ``hook_received`` events).
        """
        ...
