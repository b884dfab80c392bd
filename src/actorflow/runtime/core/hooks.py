"""A hook as the machine keeps it: its buffer of payloads, its waiters, its lifecycle."""

from __future__ import annotations

from collections import deque
from typing import Any

from ...errors import HookConflictError
from .events import Event

__all__ = ["HookState"]


class HookState:
    __slots__ = (
        "hook_id", "token", "metadata", "webhook", "buffer", "waiters", "disposed", "conflict",
        "fed", "expected", "unanswered", "claimant",
    )  # fmt: skip

    def __init__(
        self, hook_id: str, token: str, metadata: Any, webhook: dict[str, Any] | None
    ) -> None:
        self.hook_id = hook_id
        self.token = token
        self.metadata = metadata
        self.webhook = webhook
        self.buffer: deque[Event] | None = None
        self.waiters: list[Any] = []  # the machine's fibers awaiting a payload
        self.disposed = False
        self.conflict: HookConflictError | None = None
        #: Payloads fed so far, and (once disposed) how many the hook had accepted in all.
        self.fed = 0
        self.expected = 0
        #: How many of this hook's commands (creation, dispose) the driver has yet to answer.
        self.unanswered = 0
        #: The fiber that awaited the hook before that answer came.
        self.claimant: Any = None

    @property
    def draining(self) -> bool:
        """Disposed, but payloads it accepted before the dispose are still on their way."""
        return self.disposed and self.fed < self.expected
