"""Who owns a run, and how a delivery, a token claim or a read reaches it.

One interface, chosen once at start-up, with two implementations: ``LocalOwnership`` (this
process owns every run: the embedded file log, or one runtime on PostgreSQL) and
``cluster.SharedOwnership`` (runs are shared among processes over one PostgreSQL schema). The
outside API, the webhooks and the actors call only this interface, so each entry point has one
path whatever the deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.abc

from ..errors import HookNotFoundError
from .core.events import Event
from .journal import Journal
from .mailbox import Admission
from .state import HookEntry, State

__all__ = ["LocalOwnership", "Ownership", "PriorDelivery", "StaleHookError"]


class StaleHookError(HookNotFoundError):
    """A remembered hook is gone: look the token up again (never leaves the runtime)."""


@dataclass(frozen=True, slots=True)
class PriorDelivery:
    """A delivery accepted earlier with the same idempotency key on the same token."""

    digest: str
    event_id: str
    #: The hook it went to (``None``: it is no longer known here; the delivery is not found).
    hook: HookEntry | None


class Ownership(Protocol):
    """Run ownership: which process holds a run's actor, and the ways to reach it."""

    poll_interval: float

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The services ownership needs while the runtime runs (leases, inbox)."""

    def close(self) -> None: ...

    def stops_on_log_failure(self, exc: BaseException) -> bool:
        """Whether a failed log must stop the runtime (else it keeps answering 503)."""

    async def lookup(self, token: str, *, fresh: bool = False) -> HookEntry | None:
        """The live hook holding ``token``, wherever its run is owned."""

    async def prior_delivery(
        self, token: str, key: str, live: HookEntry | None
    ) -> PriorDelivery | None:
        """A delivery accepted before with ``key`` on ``token`` that this one repeats, if the
        answer can be given here (``None``: deliver, and ``deliver`` settles repeats)."""

    async def deliver(
        self,
        entry: HookEntry,
        kind: str,
        data: dict[str, Any],
        key: bytes | str | None,
        encoded: Mapping[str, bytes] | None = None,
    ) -> str:
        """Deliver to ``entry``'s run; return once in the run's history, with the id of the
        event that holds it (an earlier one for a repeat of a keyed delivery). ``encoded``:
        the user values of ``data`` already serialized (see ``Payloads.encode``).

        Raises:
            HookNotFoundError: the hook is gone (nothing committed).
            StaleHookError: a remembered hook is gone: look it up afresh.
            IdempotencyKeyConflictError: the key was used with another payload.
            OverloadedError: the run's mailbox or the log is full (nothing committed).
            LogWriteError, StorageError: the store failed.
        """

    def decide_token(self, token: str) -> tuple[bool, str | None]:
        """Decide a chosen token's claim without I/O if possible: ``(True, holder run id or
        None)``; ``(False, None)``: only ``claim_token`` can tell."""

    async def claim_token(self, token: str, run_id: str, hook_id: str) -> str | None:
        """Reserve a chosen token for ``run_id``; the id of the run already holding it, or None."""

    async def release_claim(self, token: str, run_id: str, hook_id: str) -> None:
        """Give back a claim whose hook will never be created (its run ended meanwhile)."""

    async def start_key(self, key: str) -> str | None:
        """The run started with idempotency key ``key`` elsewhere, if any."""

    async def reserve_start_key(self, key: str, run_id: str, workflow: str) -> str:
        """Reserve ``key`` for a new run ``run_id``; the run that holds it (maybe another)."""

    async def snapshot(self, run_id: str) -> State | None:
        """A run owned by another process, folded from its events (``None``: no such run)."""

    async def cancel(self, run_id: str, reason: str | None) -> None:
        """Cancel a run owned by another process."""

    async def wait_response(
        self, run_id: str, request_event_id: str, waiter: anyio.Event
    ) -> Event | None:
        """Wait for the ``webhook_responded`` answering a request (``waiter`` is set when this
        process records one); the event, or None once ``waiter`` fired without one."""

    async def wake_remote(self, run_id: str, wait_ids: list[str]) -> None:
        """Ask the owner of a run on another node to fire these sleeps now (``wake_up``)."""

    async def stream_rows(
        self, run_id: str, namespace: str, after: int, skip: int, limit: int
    ) -> tuple[list[tuple[int, bytes]], str | None]:
        """Stream records of a run owned elsewhere, and its status (see ``streams.py``)."""

    def watch_stream(self, run_id: str) -> anyio.Event:
        """An event set when a run owned elsewhere may have new stream records."""

    async def stream_namespaces(self, run_id: str) -> list[str] | None:
        """The stream namespaces of a run owned elsewhere (``None``: no such run)."""

    def routing_counts(self) -> dict[str, int]:
        """What this node routed to and from other nodes since it started (for metrics; empty
        when every run is local). Keys: see ``cluster.routing_counts``."""


class LocalOwnership:
    """This process owns every run: everything is answered from memory and the local log."""

    def __init__(
        self, state: State, journal: Journal, admission: Admission, poll_interval: float = 1.0
    ) -> None:
        self.state = state
        self.journal = journal
        self.admission = admission
        #: How often a run owned elsewhere is polled (none is, here).
        self.poll_interval = poll_interval

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()

    def close(self) -> None:
        pass

    def routing_counts(self) -> dict[str, int]:
        return {}

    def stops_on_log_failure(self, exc: BaseException) -> bool:
        return False

    async def lookup(self, token: str, *, fresh: bool = False) -> HookEntry | None:
        return self.state.tokens.get(token)

    async def prior_delivery(
        self, token: str, key: str, live: HookEntry | None
    ) -> PriorDelivery | None:
        prior = self.state.idempotency.get((token, key))
        if prior is None:
            return None
        if live is not None and live.hook_id != prior.hook_id:
            return None  # the token passed to a new hook: the key was the old hook's
        return PriorDelivery(prior.digest, prior.event_id, prior.hook)

    async def deliver(
        self,
        entry: HookEntry,
        kind: str,
        data: dict[str, Any],
        key: bytes | str | None,
        encoded: Mapping[str, bytes] | None = None,
    ) -> str:
        journal = self.journal
        run = self.state.runs[entry.run_id]
        journal.admit()
        self.admission.admit(run, entry)
        event = journal.event(entry.run_id, kind, entry.hook_id, data)
        ticket = journal.record(event, key, encoded=encoded)
        self.admission.accepted(run)
        await ticket.wait()
        return event.event_id

    def decide_token(self, token: str) -> tuple[bool, str | None]:
        entry = self.state.tokens.get(token)
        return True, entry.run_id if entry is not None else None

    async def claim_token(self, token: str, run_id: str, hook_id: str) -> str | None:
        return self.decide_token(token)[1]

    async def release_claim(self, token: str, run_id: str, hook_id: str) -> None:
        pass  # nothing was reserved beyond this process's index

    async def start_key(self, key: str) -> str | None:
        return None

    async def reserve_start_key(self, key: str, run_id: str, workflow: str) -> str:
        return run_id

    async def snapshot(self, run_id: str) -> State | None:
        return None

    async def cancel(self, run_id: str, reason: str | None) -> None:
        raise AssertionError("every run is local")  # snapshot() finds no run elsewhere

    async def wait_response(
        self, run_id: str, request_event_id: str, waiter: anyio.Event
    ) -> Event | None:
        await waiter.wait()
        return None

    async def wake_remote(self, run_id: str, wait_ids: list[str]) -> None:
        raise AssertionError("every run is local")  # snapshot() finds no run elsewhere

    # Every run is here: no stream is read from elsewhere.

    async def stream_rows(
        self, run_id: str, namespace: str, after: int, skip: int, limit: int
    ) -> tuple[list[tuple[int, bytes]], str | None]:
        return [], None

    def watch_stream(self, run_id: str) -> anyio.Event:
        return anyio.Event()  # never set: nothing is read from elsewhere

    async def stream_namespaces(self, run_id: str) -> list[str] | None:
        return None
