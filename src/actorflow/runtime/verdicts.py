"""A sender's wait for the owner's verdict on a delivery it committed to the inbox.

The owner announces each verdict by ``NOTIFY`` (``took``: in the run's history; ``drop``: its
hook went away; ``full``: the run's mailbox is); the sender also polls the database, so a lost
announcement only delays the answer. A delivery no owner claims within a lease is given up.
"""

from __future__ import annotations

import anyio
import anyio.to_thread

from ..errors import HookNotFoundError, OverloadedError, StorageError
from .core.events import Event
from .log.postgres_cluster import Directory

__all__ = ["Verdicts"]


class Verdicts:
    """The deliveries this node sent to other owners and waits on, and their verdicts."""

    def __init__(self, directory: Directory, *, lease_seconds: float, poll_interval: float) -> None:
        self.directory = directory
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self._waiting: dict[str, anyio.Event] = {}
        self._announced: dict[str, str] = {}

    def awaits(self, event_id: str) -> bool:
        """Whether a sender here waits on this delivery (a read of a dict: any thread)."""
        return event_id in self._waiting

    def announce(self, event_id: str, outcome: str) -> None:
        """The owner's announced verdict on a delivery sent from here."""
        waiter = self._waiting.get(event_id)
        if waiter is not None:
            # Sent by the owner's commit: as good as reading the outcome back.
            self._announced[event_id] = outcome
            waiter.set()

    def listen(self, event_id: str) -> None:
        """Listen for a delivery's verdict before it can be sent (``forget`` ends it)."""
        self._waiting.setdefault(event_id, anyio.Event())

    def forget(self, event_id: str) -> None:
        self._waiting.pop(event_id, None)
        self._announced.pop(event_id, None)

    async def settle(self, event: Event, *, check_first: bool, mailbox_size: int) -> None:
        """Wait for the owner's verdict on a delivery; raise if it was refused.

        Raises:
            HookNotFoundError: refused: the hook went away first (nothing delivered).
            OverloadedError: refused: the run's mailbox is full, or no owner took it in time
                (nothing delivered, in both cases); retry shortly.
            StorageError: see ``outcome``.
        """
        token = str(event.data.get("token"))
        outcome = await self.outcome(
            event.event_id, check_first=check_first, hook=(token, event.run_id)
        )
        if outcome == "drop":
            raise HookNotFoundError(token)
        if outcome == "full":
            raise OverloadedError(
                f"the mailbox of run {event.run_id} is full ({mailbox_size} payloads "
                "waiting for the workflow to take them); retry shortly",
                retry_after=1.0,
            )

    async def _polled_refusal(self, hook: tuple[str, str] | None) -> str:
        """``full`` or ``drop`` for a refusal whose announcement never came (see ``outcome``).

        Answering ``drop`` ("no such hook") for a live hook would make its sender give up on
        it; a hook disposed since its ``full`` refusal reads as ``drop``, which is true by then.
        """
        if hook is None:
            return "drop"
        token, run_id = hook
        live = await anyio.to_thread.run_sync(self.directory.lookup, token)
        return "full" if live is not None and live.run_id == run_id else "drop"

    async def outcome(
        self, event_id: str, *, check_first: bool = False, hook: tuple[str, str] | None = None
    ) -> str:
        """Wait until the owner has taken a delivery into the run's history (``took``) or
        refused it (``drop``, ``full``). Woken by the owner's ``NOTIFY``, and polled.

        A refusal seen only by polling carries no reason. Given the delivery's ``hook`` (token,
        run id), it reads as ``full`` while that hook is still live for that run (a live hook's
        delivery is refused only when the mailbox is full), and as ``drop`` otherwise; without
        it, as ``drop``.

        Raises:
            OverloadedError: no owner took it within a lease; it was given up (nothing
                committed), so the sender may retry.
            StorageError: an owner claimed it and then said nothing for three leases: its
                outcome is unknown.
        """
        waiter = self._waiting.setdefault(event_id, anyio.Event())
        start = anyio.current_time()
        gave_up_at = start + self.lease_seconds
        try:
            if not check_first:
                with anyio.move_on_after(self.poll_interval):
                    await waiter.wait()
            while True:
                announced = self._announced.pop(event_id, None)
                if announced is not None:
                    return announced
                if waiter.is_set():
                    waiter = self._waiting[event_id] = anyio.Event()
                in_history, pending = await anyio.to_thread.run_sync(
                    self.directory.delivery_state, event_id
                )
                if in_history:
                    return "took"
                if not pending:
                    return await self._polled_refusal(hook)
                now = anyio.current_time()
                if now >= gave_up_at:
                    cancelled = await anyio.to_thread.run_sync(
                        self.directory.cancel_delivery, event_id
                    )
                    if cancelled:
                        raise OverloadedError(
                            "the run's owner did not take the delivery in time (it may be "
                            "restarting); nothing was delivered: retry shortly",
                            retry_after=1.0,
                        )
                    if now >= start + 3 * self.lease_seconds:
                        raise StorageError(
                            f"delivery {event_id} was claimed by the run's owner, which has not "
                            "finished it: its outcome is unknown; retry with an idempotency key"
                        )
                with anyio.move_on_after(self.poll_interval):
                    await waiter.wait()
        finally:
            self._waiting.pop(event_id, None)
            self._announced.pop(event_id, None)
