"""The one error hierarchy of actorflow.

Every error a caller can see derives from :class:`WorkflowError`. Subclasses are split by what the
caller can do about them::

    WorkflowError
    ├── FatalError                  raised in a step: do not retry
    ├── RetryableError              raised in a step: retry after ``retry_after``
    ├── SerializationError          a value cannot be encoded or decoded; nothing committed
    │   └── PayloadTooLargeError    a value is over the runtime's size limit (HTTP 413)
    ├── DecryptionError             stored data cannot be decrypted (tampered, wrong key)
    ├── HookError
    │   ├── HookNotFoundError       no live hook owns the token; nothing committed (HTTP 404)
    │   ├── HookConflictError       another live hook holds the token
    │   ├── HookTimeoutError        ``hook.wait(timeout=...)`` passed its deadline
    │   ├── HookPayloadError        a typed hook rejected the payload; nothing committed (422)
    │   ├── IdempotencyKeyConflictError  an idempotency key reused with another payload
    │   └── WebhookSignatureError   a webhook request failed its signature check (HTTP 401)
    ├── WorkflowRunError
    │   ├── WorkflowRunNotFoundError
    │   │   └── RunExpiredError     the run ended longer ago than the retention period
    │   ├── WorkflowRunFailedError  ``run.result()`` of a failed run; ``cause`` says why
    │   └── WorkflowRunCancelledError
    ├── WorkflowDefinitionError     misuse of the programming model (bad decorator use, names)
    │   └── NonDeterministicAwaitError  a workflow awaited something that is not a primitive
    ├── ReplayDivergenceError       the code no longer matches the recorded history
    ├── OverloadedError             a bounded queue is full; retry later (HTTP 503)
    ├── InvalidQueryError           a listing's filter, limit or cursor is invalid (HTTP 400)
    └── StorageError
        ├── LogCorruptedError       a record before the tail fails its checksum
        ├── LogFormatError          the data directory holds another format version
        └── LogWriteError           a write or fsync failed; the log accepts nothing more
            └── LeaseLostError      another process took this one's runs (PostgreSQL store)

Foreign exceptions are translated at one boundary and chained with ``raise ... from exc``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "DecryptionError",
    "FatalError",
    "HookConflictError",
    "HookError",
    "HookNotFoundError",
    "HookPayloadError",
    "HookTimeoutError",
    "IdempotencyKeyConflictError",
    "InvalidQueryError",
    "LogCorruptedError",
    "LogFormatError",
    "LeaseLostError",
    "LogWriteError",
    "NonDeterministicAwaitError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ReplayDivergenceError",
    "RetryableError",
    "RunExpiredError",
    "SerializationError",
    "StorageError",
    "WebhookSignatureError",
    "WorkflowDefinitionError",
    "WorkflowError",
    "WorkflowRunCancelledError",
    "WorkflowRunError",
    "WorkflowRunFailedError",
    "WorkflowRunNotFoundError",
]


class WorkflowError(Exception):
    """Root of every error actorflow raises."""


class FatalError(WorkflowError):
    """Raised in a step to fail it at once, without retries.

    The error is re-raised into the workflow at the ``await`` of the step, where it can be caught.
    """


class RetryableError(WorkflowError):
    """Raised in a step to retry it after ``retry_after``.

    ``retry_after`` is seconds, a ``timedelta``, a duration string such as ``"5m"``, or an aware
    ``datetime`` to retry at. Default: one second.
    """

    def __init__(
        self, message: str = "", *, retry_after: float | timedelta | str | datetime | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SerializationError(WorkflowError):
    """A value cannot be encoded for the log (or decoded from it). Nothing was committed."""


class PayloadTooLargeError(SerializationError):
    """A value is larger than the runtime accepts (``max_payload_bytes``). Nothing committed."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(
            f"{what}: {size} bytes encoded, over the limit of {limit} bytes; send a reference "
            "(a URL, an object-store key) instead, or raise Runtime(max_payload_bytes=...)"
        )
        self.size = size
        self.limit = limit


class DecryptionError(WorkflowError):
    """Stored data failed to decrypt: it was tampered with, moved, or the key is missing."""


class HookError(WorkflowError):
    """Base of the errors about hooks."""


class HookNotFoundError(HookError):
    """No live hook owns ``token``: unknown, disposed, or its run has ended. Nothing committed."""

    def __init__(self, token: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"no live hook has token {_short(token)!r}: it is unknown, was disposed, or its "
            "run has ended; check the token, or create the hook before resuming it"
        )
        self.token = token


class HookConflictError(HookError):
    """The token is held by another live hook (``conflicting_run_id`` owns it)."""

    def __init__(self, token: str, conflicting_run_id: str) -> None:
        super().__init__(
            f"token {_short(token)!r} is already held by a live hook of run "
            f"{conflicting_run_id}; choose another token or dispose the other hook first"
        )
        self.token = token
        self.conflicting_run_id = conflicting_run_id


class HookTimeoutError(HookError):
    """``hook.wait(timeout=...)`` reached its deadline before a payload arrived."""

    def __init__(self, token: str, timeout: float) -> None:
        super().__init__(f"no payload reached hook {_short(token)!r} within {timeout:g} s")
        self.token = token
        self.timeout = timeout


class HookPayloadError(HookError):
    """A typed hook rejected the payload. ``problems`` lists every problem. Nothing committed."""

    def __init__(self, token: str, problems: list[str]) -> None:
        listed = "; ".join(problems) if problems else "invalid payload"
        super().__init__(f"payload for hook {_short(token)!r} rejected: {listed}")
        self.token = token
        self.problems = problems


class IdempotencyKeyConflictError(HookError):
    """An idempotency key was reused with a different payload. Nothing committed."""

    def __init__(self, token: str, idempotency_key: str) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} was already used on hook {_short(token)!r} "
            "with a different payload; use a new key for a new payload"
        )
        self.token = token
        self.idempotency_key = idempotency_key


class WebhookSignatureError(HookError):
    """A webhook request failed its signature check. Nothing committed (HTTP 401)."""


class WorkflowRunError(WorkflowError):
    """Base of the errors about a run."""


class WorkflowRunNotFoundError(WorkflowRunError):
    """No run has this id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no workflow run has id {run_id!r}; check the id (it starts with wrun_)")
        self.run_id = run_id


class RunExpiredError(WorkflowRunNotFoundError):
    """The run ended longer ago than the runtime's retention period; nothing of it is kept.

    A subclass of ``WorkflowRunNotFoundError``: code that handles "not found" handles this too.
    """

    def __init__(self, run_id: str, retention: float) -> None:
        WorkflowRunError.__init__(
            self,
            f"workflow run {run_id!r} has expired: finished runs are kept for "
            f"{_duration_text(retention)} after they end (the runtime's retention)",
        )
        self.run_id = run_id
        self.retention = retention


def _duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class WorkflowRunFailedError(WorkflowRunError):
    """The run failed. ``cause`` is the error it failed with (also chained as ``__cause__``)."""

    def __init__(self, run_id: str, cause: BaseException) -> None:
        super().__init__(f"workflow run {run_id} failed: {type(cause).__name__}: {cause}")
        self.run_id = run_id
        self.cause = cause


class WorkflowRunCancelledError(WorkflowRunError):
    """The run was cancelled (``reason`` says why, if given)."""

    def __init__(self, run_id: str, reason: str | None = None) -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"workflow run {run_id} was cancelled{detail}")
        self.run_id = run_id
        self.reason = reason


class WorkflowDefinitionError(WorkflowError):
    """The programming model was misused: a decorator, a name, an argument of a primitive."""


class NonDeterministicAwaitError(WorkflowDefinitionError):
    """A workflow awaited something that is not an actorflow primitive (a socket, a sleep...)."""

    def __init__(self, awaited: Any) -> None:
        shown = awaited if isinstance(awaited, str) else repr(awaited)
        super().__init__(
            f"a workflow awaited {shown}, which is not an actorflow primitive; workflow code "
            "must be deterministic: move I/O and real waiting into an @af.step, and use "
            "af.sleep for timers"
        )
        self.awaited = awaited


class ReplayDivergenceError(WorkflowError):
    """The workflow's calls no longer match its recorded history (the code changed)."""

    def __init__(self, run_id: str, position: int, expected: str, got: str) -> None:
        super().__init__(
            f"run {run_id} diverged from its history at durable call #{position}: the log "
            f"recorded {expected}, the code now made {got}; keep old code paths for runs "
            "started before the change"
        )
        self.run_id = run_id
        self.position = position
        self.expected = expected
        self.got = got


class OverloadedError(WorkflowError):
    """A bounded queue (a run's mailbox, the log backlog) is full. Retry after ``retry_after``."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidQueryError(WorkflowError, ValueError):
    """A listing was asked for with a bad filter, limit or cursor; nothing was read."""


class StorageError(WorkflowError):
    """The event log failed."""


class LogCorruptedError(StorageError):
    """A record before the tail of the log fails its checksum (``path``, ``offset``)."""

    def __init__(self, path: str, offset: int, detail: str) -> None:
        super().__init__(
            f"event log corrupted in {path} at offset {offset}: {detail}; this is not a torn "
            "tail (valid records follow), so actorflow refuses to guess: restore the file from "
            "a backup, or run `actorflow log verify` to see every damaged record"
        )
        self.path = path
        self.offset = offset


class LogFormatError(StorageError):
    """The data directory holds a log of another format, or something that is not a log."""


class LogWriteError(StorageError):
    """A write or fsync failed. The log accepts nothing more until the runtime restarts."""


class LeaseLostError(LogWriteError):
    """This process's lease on its runs ran out and another process took them over.

    Raised (on the shared PostgreSQL store) by the append that found it, which commits
    nothing, and by the lease renewal. The runtime stops; a restart joins as a new process.
    """


def _short(token: str) -> str:
    return token if len(token) <= 64 else token[:61] + "..."
