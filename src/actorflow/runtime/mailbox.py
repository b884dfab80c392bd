"""A run's mailbox, and the one bound on what outside senders may leave waiting in it.

Messages (durable events of the run) queue in the run's ``Mailbox`` until its actor takes them.
Outside deliveries (resumes, webhook requests) are bounded per hook: payloads admitted and not yet
taken by the workflow (in flight to disk, queued in the mailbox, or fed to a hook nobody awaits)
may not exceed ``size``. ``Admission`` is the one place that admits or refuses such a delivery,
for a delivery made here and for one routed from another process alike; internal messages (step
results, timers) are never refused: the run itself asked for them.
"""

from __future__ import annotations

from collections import deque

from ..errors import OverloadedError
from .core import events as ev
from .core.events import Event
from .limits import Limits
from .state import HookEntry, RunState

__all__ = ["Admission", "Mailbox"]


class Mailbox(deque[Event]):
    """The queue of one run's durable messages, in log order (a deque: the dispatcher tests
    and pops it for every message, so it stays a C object)."""

    __slots__ = ()

    #: Queue a message.
    put = deque.append
    #: The oldest message (the mailbox must not be empty).
    take = deque.popleft

    def peek(self) -> Event | None:
        return self[0] if self else None


class Admission:
    """The bound on outside deliveries waiting for one hook's workflow to take them."""

    __slots__ = ("_limits",)

    def __init__(self, limits: Limits) -> None:
        self._limits = limits

    @property
    def size(self) -> int:
        return self._limits.mailbox_size

    def has_room(self, run: RunState, entry: HookEntry) -> bool:
        return run.external + entry.untaken < self.size

    def admit(self, run: RunState, entry: HookEntry) -> None:
        """Check there is room for one more outside delivery to ``entry``'s hook.

        Raises:
            OverloadedError: the mailbox is full.
        """
        if run.external + entry.untaken >= self._limits.mailbox_size:  # not has_room()
            raise OverloadedError(
                f"the mailbox of run {run.run_id} is full ({self.size} payloads waiting "
                "for the workflow to take them); retry shortly",
                retry_after=1.0,
            )

    @staticmethod
    def accepted(run: RunState) -> None:
        """An admitted delivery was submitted to the log: it holds a slot until taken."""
        run.external += 1

    @staticmethod
    def taken(run: RunState, event: Event) -> None:
        """The actor took ``event`` from the mailbox: an outside delivery frees its slot."""
        if event.type == ev.HOOK_RECEIVED and event.data.get("external"):
            run.external -= 1

    @staticmethod
    def untaken(entry: HookEntry, buffered: int) -> None:
        """The hook holds ``buffered`` payloads fed to it and not yet awaited."""
        entry.untaken = buffered
