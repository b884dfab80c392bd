"""Event records: what the log holds, one per fact about a run.

The core only reads events; it never touches storage. Values inside ``data`` that came from users
(payloads, arguments, results, errors, metadata, requests, responses) are codec trees, possibly
encrypted envelopes; everything else in ``data`` is plain JSON.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "COMMAND_EVENTS",
    "COMPLETION_EVENTS",
    "EVENT_TYPES",
    "STREAM_EVENTS",
    "TERMINAL_EVENTS",
    "USER_VALUE_KEYS",
    "Event",
]

RUN_CREATED: Final = "run_created"
RUN_STARTED: Final = "run_started"
RUN_COMPLETED: Final = "run_completed"
RUN_FAILED: Final = "run_failed"
RUN_CANCELLED: Final = "run_cancelled"
STEP_STARTED: Final = "step_started"
STEP_COMPLETED: Final = "step_completed"
STEP_FAILED: Final = "step_failed"
STEP_RETRYING: Final = "step_retrying"
STEP_CANCELLED: Final = "step_cancelled"
HOOK_CREATED: Final = "hook_created"
HOOK_CONFLICT: Final = "hook_conflict"
HOOK_RECEIVED: Final = "hook_received"
HOOK_DISPOSED: Final = "hook_disposed"
WAIT_CREATED: Final = "wait_created"
WAIT_COMPLETED: Final = "wait_completed"
WAIT_CANCELLED: Final = "wait_cancelled"
WEBHOOK_RESPONDED: Final = "webhook_responded"
#: A patch's marker: the run took the new branch of ``af.patched(id)`` (a durable call).
PATCH_MARKED: Final = "patch_marked"
#: The code no longer fits the run's history (or its workflow is missing): the run waits.
RUN_PARKED: Final = "run_parked"
#: A parked run's history replayed cleanly again: it goes on where it was.
RUN_UNPARKED: Final = "run_unparked"
STREAM_CHUNK: Final = "stream_chunk"
STREAM_CLOSED: Final = "stream_closed"

EVENT_TYPES: Final = frozenset(
    {
        RUN_CREATED, RUN_STARTED, RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED,
        STEP_STARTED, STEP_COMPLETED, STEP_FAILED, STEP_RETRYING, STEP_CANCELLED,
        HOOK_CREATED, HOOK_CONFLICT, HOOK_RECEIVED, HOOK_DISPOSED,
        WAIT_CREATED, WAIT_COMPLETED, WAIT_CANCELLED, WEBHOOK_RESPONDED,
        PATCH_MARKED, RUN_PARKED, RUN_UNPARKED,
        STREAM_CHUNK, STREAM_CLOSED,
    }
)  # fmt: skip

#: A run's stream records: kept out of the run's history (a replay never reads them) and
#: indexed per stream instead (``stream_index.py``).
STREAM_EVENTS: Final = frozenset({STREAM_CHUNK, STREAM_CLOSED})

#: Events the workflow's own durable calls produce, matched by position on replay.
COMMAND_EVENTS: Final = frozenset(
    {
        STEP_STARTED, HOOK_CREATED, HOOK_CONFLICT, HOOK_DISPOSED,
        WAIT_CREATED, WAIT_CANCELLED, WEBHOOK_RESPONDED, PATCH_MARKED,
    }
)  # fmt: skip

#: Events from outside the workflow that move it on; fed to the machine in log order.
COMPLETION_EVENTS: Final = frozenset(
    {STEP_COMPLETED, STEP_FAILED, HOOK_RECEIVED, WAIT_COMPLETED, RUN_CANCELLED}
)

TERMINAL_EVENTS: Final = frozenset({RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED})

#: Keys of ``data`` that hold user values (encrypted when encryption is on).
USER_VALUE_KEYS: Final = frozenset(
    {"input", "args", "result", "error", "metadata", "payload", "request", "response", "chunk"}
)


class Event:
    """One fact about a run. ``position`` is where the log stored it (``-1`` until written)."""

    __slots__ = ("event_id", "run_id", "type", "correlation_id", "created_at", "data", "position")

    def __init__(
        self,
        event_id: str,
        run_id: str,
        type: str,
        correlation_id: str | None,
        created_at: float,
        data: dict[str, Any],
        position: int = -1,
    ) -> None:
        self.event_id = event_id
        self.run_id = run_id
        self.type = type
        self.correlation_id = correlation_id
        #: Seconds since the epoch (UTC).
        self.created_at = created_at
        self.data = data
        self.position = position

    def __repr__(self) -> str:
        return (
            f"Event({self.type} run={self.run_id} corr={self.correlation_id} "
            f"id={self.event_id} pos={self.position})"
        )
