"""actorflow: durable workflows for Python, as an async actor system on an append-only log.

Inside a workflow::

    import actorflow as af

    @af.workflow
    async def approve(order_id: str) -> str:
        hook = af.create_hook(token=f"approval:{order_id}")
        decision = await hook
        return decision["verdict"]

Outside, ``async with af.Runtime(workflows=[approve]) as rt`` and ``af.api`` / ``rt`` methods.
"""

from __future__ import annotations

from . import api, verify
from .errors import (
    DecryptionError,
    FatalError,
    HookConflictError,
    HookError,
    HookNotFoundError,
    HookPayloadError,
    HookTimeoutError,
    IdempotencyKeyConflictError,
    InvalidQueryError,
    LeaseLostError,
    LogCorruptedError,
    LogFormatError,
    LogWriteError,
    NonDeterministicAwaitError,
    OverloadedError,
    PayloadTooLargeError,
    ReplayDivergenceError,
    RetryableError,
    RunExpiredError,
    SerializationError,
    StorageError,
    WebhookSignatureError,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowRunCancelledError,
    WorkflowRunError,
    WorkflowRunFailedError,
    WorkflowRunNotFoundError,
)
from .form_parsing import parse_form as _parse_form
from .runtime.parking import Parking, RetryReport
from .runtime.query import (
    EventRecord,
    HookSummary,
    HookWait,
    Page,
    RunInfo,
    RunSummary,
    SleepWait,
    StepWait,
    WaitingOn,
)
from .runtime.records import Hook, Readable, Run
from .runtime.runtime import Runtime
from .runtime.typed_hooks import TypedHook, define_hook
from .runtime.webhook_request import Request, Response
from .runtime.webhook_request import set_form_parser as _set_form_parser
from .runtime.workflow import (
    StepMetadata,
    WorkflowMetadata,
    create_hook,
    create_webhook,
    deprecate_patch,
    first,
    gather,
    get_step_metadata,
    get_workflow_metadata,
    now,
    patched,
    random,
    sleep,
    step,
    uuid4,
    workflow,
)
from .runtime.writable import Writable, get_writable

_set_form_parser(_parse_form)

__version__ = "0.1.0"

__all__ = [
    "DecryptionError",
    "EventRecord",
    "FatalError",
    "Hook",
    "HookConflictError",
    "HookError",
    "HookNotFoundError",
    "HookPayloadError",
    "HookSummary",
    "HookTimeoutError",
    "HookWait",
    "IdempotencyKeyConflictError",
    "InvalidQueryError",
    "LeaseLostError",
    "LogCorruptedError",
    "LogFormatError",
    "LogWriteError",
    "NonDeterministicAwaitError",
    "OverloadedError",
    "Page",
    "Parking",
    "PayloadTooLargeError",
    "Readable",
    "ReplayDivergenceError",
    "Request",
    "Response",
    "RetryReport",
    "RetryableError",
    "Run",
    "RunInfo",
    "RunSummary",
    "RunExpiredError",
    "Runtime",
    "SerializationError",
    "SleepWait",
    "StepMetadata",
    "StepWait",
    "StorageError",
    "TypedHook",
    "WaitingOn",
    "WebhookSignatureError",
    "WorkflowDefinitionError",
    "WorkflowError",
    "WorkflowMetadata",
    "WorkflowRunCancelledError",
    "WorkflowRunError",
    "WorkflowRunFailedError",
    "WorkflowRunNotFoundError",
    "Writable",
    "api",
    "create_hook",
    "create_webhook",
    "define_hook",
    "deprecate_patch",
    "first",
    "gather",
    "get_step_metadata",
    "get_workflow_metadata",
    "get_writable",
    "now",
    "patched",
    "random",
    "sleep",
    "step",
    "uuid4",
    "verify",
    "workflow",
]
