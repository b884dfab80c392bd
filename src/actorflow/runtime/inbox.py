"""The inbox: deliveries to runs another node owns, through a table in the shared schema.

Sender side: a resume or webhook for a run owned elsewhere is committed to the inbox by the node
that received it; the owner is woken by ``NOTIFY`` and also polls, so a lost notification only
delays a delivery. The sender answers once the owner has taken the delivery into the run's
history (``took``), or refused it (``drop``: its hook went away; ``full``: the run's mailbox
is), or gives it up when no owner claims it within a lease.

Owner side: each record is claimed as it is read, then appended unchanged (same event id, same
encrypted bytes) if its hook is live here, or refused; the mailbox bound is the one a delivery
made here meets (``mailbox.Admission``).

Deliveries forwarded straight to the owner over a peer link (``forwarding.py``) are taken here
too (``take_forwarded``), with the same checks. One whose link failed before its answer came back
is committed to the inbox under the same event id, flagged ``forwarded``: the owner may have
appended it already. So an owner never appends an event id twice: a flagged row whose event is
in the log (or on its way there from a forward) is only removed, and its sender told ``took``;
a forward whose inbox copy was taken first is answered from that copy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.to_thread

from ..errors import (
    HookNotFoundError,
    IdempotencyKeyConflictError,
    LogWriteError,
    OverloadedError,
    StorageError,
)
from .core import events as ev
from .core.events import Event
from .journal import Journal
from .log.postgres_cluster import Directory, ForeignHook
from .log.postgres_peers import PeerDirectory
from .log.writer import Ticket
from .mailbox import Admission
from .ownership import StaleHookError
from .payloads import Payloads
from .state import HookEntry, State
from .verdicts import Verdicts

__all__ = ["Inbox", "NotOwnedHereError"]

logger = logging.getLogger("actorflow.cluster")

_INBOX_BATCH = 1000
# How long an owner remembers the event ids of forwarded deliveries it took from the inbox, so a
# forward of the same delivery that arrives after them is answered, not appended again. A
# forward older than ``forwarding.STALE_SECONDS`` is refused anyway; this is well past it.
_REMEMBER_FALLBACKS = 600.0


class NotOwnedHereError(StorageError):
    """A forwarded delivery's run is not owned here (never leaves the runtime)."""


def _retry_of(event: Event, first_event_id: str) -> Event:
    """The delivery a retry is answered by (for its outcome: same run and token)."""
    return Event(first_event_id, event.run_id, event.type, event.correlation_id,
                 event.created_at, event.data)  # fmt: skip


class Inbox:
    """This node's side of the inbox: what it sends to other owners, and what it takes."""

    def __init__(
        self,
        directory: Directory,
        *,
        state: State,
        journal: Journal,
        admission: Admission,
        payloads: Payloads,
        node_id: str,
        lease_seconds: float,
        poll_interval: float,
        hook_cache: dict[str, HookEntry],
    ) -> None:
        self.directory = directory
        self.state = state
        self.journal = journal
        self.admission = admission
        self.payloads = payloads
        self.node_id = node_id
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self._hook_cache = hook_cache
        self._wake = anyio.Event()
        #: A wake is on its way to the event loop (set in the listener's thread).
        self.wake_pending = threading.Event()
        # Inbox records submitted to the writer and not yet durable, by event id: a sender at
        # this node waits on their tickets.
        self._inflight: dict[str, Ticket] = {}
        #: Inbox records this node appended as their run's owner / deliveries it committed.
        self.ingested = 0
        self.sent = 0
        #: Deliveries this node committed for another node's runs, awaiting their verdict.
        self.verdicts = Verdicts(
            directory, lease_seconds=lease_seconds, poll_interval=poll_interval
        )
        self.peers = PeerDirectory(directory)
        #: Deliveries forwarded here and submitted, by event id, until an inbox read that
        #: began after they were durable (which then finds them in the log).
        self._forwarded: dict[str, Ticket] = {}
        #: Forwarded deliveries taken from the inbox here: event id -> when (monotonic).
        self._fallen_back: dict[str, float] = {}

    def wake(self) -> None:
        """Read the inbox now (a notification, or runs just taken over)."""
        self._wake.set()

    def awaits(self, event_id: str) -> bool:
        """Whether a sender here waits on this delivery (a read of a dict: any thread)."""
        return self.verdicts.awaits(event_id)

    def announce(self, event_id: str, outcome: str) -> None:
        """The owner's announced outcome of a delivery sent from here."""
        self.verdicts.announce(event_id, outcome)

    async def run(self) -> None:
        while True:
            with anyio.move_on_after(self.poll_interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            self.wake_pending.clear()  # before reading: a later notification wakes us again
            try:
                while await self.ingest() >= _INBOX_BATCH:
                    pass
            except LogWriteError:
                # This node's log failed (and with a lost lease, the runtime): the inbox stays
                # in the database for whichever node owns the runs next.
                return
            except StorageError as exc:
                logger.warning("reading the inbox failed, retrying: %s", exc)

    async def ingest(self) -> int:
        """Take the inbox records of runs this node owns into their history; return how many
        records were read.

        Each record is claimed as it is read (its sender can no longer give it up), then appended if
        its hook is live here, or refused (its sender answers "not found") if the hook went
        away since the delivery: a delivery that lost the race with a dispose never happened.
        """
        for event_id, ticket in list(self._inflight.items()):
            if ticket.done:
                del self._inflight[event_id]
        # Durable before this read began: the read below finds them in the log.
        durable = [event_id for event_id, ticket in self._forwarded.items() if ticket.done]
        rows = await anyio.to_thread.run_sync(self.directory.fetch_inbox, _INBOX_BATCH)
        decode = self.payloads.decode_plain
        read = [
            (run_id, decode(record), record, forwarded) for _, run_id, record, forwarded in rows
        ]
        flagged = [event.event_id for _, event, _, forwarded in read if forwarded]
        in_log = await anyio.to_thread.run_sync(self.peers.in_history, flagged) if flagged else ()
        refused: dict[str, list[str]] = {"drop": [], "full": []}
        later: list[str] = []
        settled: list[str] = []
        # Claimed by the fetch; no await from the checks to the appends.
        for run_id, event, record, forwarded in read:
            if forwarded and event.event_id in in_log:
                settled.append(event.event_id)  # its forward was appended: never twice
                continue
            if run_id not in self.state.runs or event.event_id in self._forwarded:
                # Claimed a moment ago and not adopted yet, or its forward is on its way to
                # the log here: the next read takes it, or finds it there.
                later.append(event.event_id)
                continue
            verdict = self._verdict(event)
            if verdict == "take":
                self._submit(event, record)
                if forwarded:
                    self._fallen_back[event.event_id] = time.monotonic()
            else:
                refused[verdict].append(event.event_id)
        for event_id in durable:
            self._forwarded.pop(event_id, None)
        self._forget_fallbacks()
        await self._refuse(refused)
        if settled:
            await anyio.to_thread.run_sync(self.peers.settle_inbox, settled)
        if later:
            await anyio.to_thread.run_sync(self.directory.unclaim_inbox, later)
        return len(rows)

    def _forget_fallbacks(self) -> None:
        horizon = time.monotonic() - _REMEMBER_FALLBACKS
        fallen_back = self._fallen_back
        while fallen_back:
            event_id, seen = next(iter(fallen_back.items()))
            if seen >= horizon:
                break
            del fallen_back[event_id]

    def take_forwarded(self, event: Event, record: bytes) -> Ticket | None:
        """Take a delivery another node forwarded here, as a local one is taken; the ticket to
        wait for (``None``: it is durable already, taken from the inbox first).

        Raises:
            NotOwnedHereError: the run is not owned here (the sender uses the inbox).
            HookNotFoundError: the hook is gone (nothing delivered).
            OverloadedError: the run's mailbox, or the log's backlog, is full.
            LogWriteError: the log has failed.
        """
        run = self.state.runs.get(event.run_id)
        if run is None or event.data.get("via") is not None:
            raise NotOwnedHereError(f"run {event.run_id} is not owned by node {self.node_id}")
        taken = self._inflight.get(event.event_id) or self._forwarded.get(event.event_id)
        if taken is not None:
            return taken  # its inbox copy (or a repeat of this forward) was taken first
        if event.event_id in self._fallen_back:
            return None
        token = str(event.data.get("token"))
        entry = self.state.tokens.get(token)
        if (
            run.finished
            or event.type != ev.HOOK_RECEIVED
            or entry is None
            or entry.hook_id != event.correlation_id
            or entry.run_id != event.run_id
        ):
            raise HookNotFoundError(token)
        journal = self.journal
        journal.admit()
        self.admission.admit(run, entry)
        ticket: Ticket = journal.record(event, record=record)
        if event.data.get("external"):
            self.admission.accepted(run)
        self._forwarded[event.event_id] = ticket
        return ticket

    async def _take(self, candidates: list[tuple[Event, bytes]]) -> None:
        ids = [event.event_id for event, _ in candidates]
        claimed = set(await anyio.to_thread.run_sync(self.directory.claim_inbox, ids))
        refused: dict[str, list[str]] = {"drop": [], "full": []}
        # No await from the check to the append: the hook cannot go away in between.
        for event, record in candidates:
            if event.event_id not in claimed:
                continue  # given up by its sender, or taken by another pass
            verdict = self._verdict(event)
            if verdict == "take":
                self._submit(event, record)
            else:
                refused[verdict].append(event.event_id)
        await self._refuse(refused)

    async def _refuse(self, refused: dict[str, list[str]]) -> None:
        for kind, event_ids in refused.items():
            if event_ids:
                await anyio.to_thread.run_sync(self.directory.drop_inbox, event_ids, kind)

    def _verdict(self, event: Event) -> str:
        """``take``; ``drop``: its hook (or run) is gone; ``full``: the run's mailbox is."""
        state = self.state
        run = state.runs.get(event.run_id)
        if run is None or run.finished:
            return "drop"
        if event.type == ev.WAIT_COMPLETED:  # a wake_up from another node: fire it once
            return "take" if event.correlation_id in state.timers else "drop"
        if event.type != ev.HOOK_RECEIVED:
            return "take"
        entry = state.tokens.get(str(event.data.get("token")))
        if entry is None or entry.hook_id != event.correlation_id:
            return "drop"
        # The bound a delivery made here meets.
        if not self.admission.has_room(run, entry):
            return "full"
        return "take"

    def _submit(self, event: Event, record: bytes) -> Ticket:
        journal = self.journal
        journal.check()
        ticket: Ticket = journal.record(event, record=record)
        self._inflight[event.event_id] = ticket
        run = self.state.runs.get(event.run_id)
        if run is not None and event.type == ev.HOOK_RECEIVED and event.data.get("external"):
            self.admission.accepted(run)
        self.ingested += 1
        return ticket

    async def deliver(
        self,
        entry: HookEntry,
        kind: str,
        data: dict[str, Any],
        key: bytes | str | None = None,
        encoded: Mapping[str, bytes] | None = None,
        *,
        forwarded: Event | None = None,
    ) -> tuple[str, bool]:
        """Commit a delivery to the inbox of the hook's run (``encoded``: its user values
        already serialized, see ``Payloads.encode``).

        Returns the event id that holds it and whether it is new (``False``: a retry with the
        same idempotency key and payload, answered by the first delivery). ``forwarded``: the
        event a forward to the owner carried, whose answer never came: the inbox copy keeps
        its id (and is flagged), so the owner appends it at most once.

        Raises:
            HookNotFoundError: the hook is gone (disposed, or its run ended) by now.
            IdempotencyKeyConflictError: the key was used before with another payload.
            OverloadedError: the run's inbox is full.
            StaleHookError: the same, for an entry this node remembered: look it up afresh.
            StorageError: the database failed (nothing committed, or the outcome unknown).
        """
        remote = entry.remote
        if remote is None:
            # A hook of a run this node owns, delivered through the inbox for the shared
            # idempotency check: its hook_created must be committed first.
            await self.journal.flush()
            remote = ForeignHook(entry.token, entry.run_id, entry.hook_id, self.node_id, b"")
        data = {**data, "via": "inbox"}
        if forwarded is None:
            event = self.journal.event(entry.run_id, kind, entry.hook_id, data)
        else:
            event = Event(forwarded.event_id, forwarded.run_id, forwarded.type,
                          forwarded.correlation_id, forwarded.created_at, data)  # fmt: skip
        record = self.payloads.encode(event, key, encoded)
        idempotency_key = data.get("idempotency_key")
        # Listen for the owner's answer before it can be sent.
        self.verdicts.listen(event.event_id)
        try:
            outcome = await self._deliver(entry, event, record, remote, data, idempotency_key,
                                          forwarded is not None)  # fmt: skip
        finally:
            self.verdicts.forget(event.event_id)
        if outcome[1]:  # not a keyed retry answered by its first delivery
            self.sent += 1
        return outcome

    async def _deliver(
        self,
        entry: HookEntry,
        event: Event,
        record: bytes,
        remote: ForeignHook,
        data: dict[str, Any],
        idempotency_key: Any,
        forwarded: bool,
    ) -> tuple[str, bool]:
        size = self.admission.size
        outcome = await anyio.to_thread.run_sync(
            lambda: self.directory.deliver(
                remote,
                event.event_id,
                record,
                key=None if idempotency_key is None else str(idempotency_key),
                digest=None if idempotency_key is None else str(data.get("digest")),
                mailbox_size=size,
                forwarded=forwarded,
            )
        )
        if forwarded and outcome.status in ("gone", "full"):
            # Refused now, maybe because the forward got in first (the workflow took it and
            # disposed the hook, or it fills the mailbox): then it was delivered.
            found = await anyio.to_thread.run_sync(self.peers.in_history, [event.event_id])
            if found:
                return event.event_id, True
        if outcome.status == "gone":
            if self._hook_cache.get(entry.token) is entry:
                del self._hook_cache[entry.token]
                raise StaleHookError(entry.token)
            raise HookNotFoundError(entry.token)
        if outcome.status == "full":
            raise OverloadedError(
                f"the inbox of run {entry.run_id} is full ({size} deliveries waiting "
                "for its owner); retry shortly",
                retry_after=1.0,
            )
        if outcome.status == "conflict":
            raise IdempotencyKeyConflictError(entry.token, str(idempotency_key))
        # Answer once the delivery is in the run's history, as a resume of a local run always
        # is: a later resume is then ordered after it, and a delivery that lost a race with the
        # hook's dispose is refused rather than acknowledged and dropped.
        if outcome.status == "accepted" and outcome.owner == self.node_id:
            await self._append_now(event, record)
            return outcome.event_id, True
        if outcome.owner == self.node_id:
            self._wake.set()  # a retry of a delivery still in this node's inbox
        settled = event if outcome.status == "accepted" else _retry_of(event, outcome.event_id)
        await self.verdicts.settle(
            settled, check_first=outcome.status != "accepted", mailbox_size=size
        )
        return outcome.event_id, outcome.status == "accepted"

    async def _append_now(self, event: Event, record: bytes) -> None:
        """Take a delivery to a run this node owns into its history now; wait until durable.

        Raises:
            HookNotFoundError: the hook went away before it was taken (nothing delivered).
        """
        if event.event_id not in self._inflight and event.run_id in self.state.runs:
            await self._take([(event, record)])
        ticket = self._inflight.get(event.event_id)
        if ticket is not None:
            await ticket.wait()
        else:  # refused by _take (announced to us), or taken by the inbox poll first
            await self.verdicts.settle(event, check_first=True, mailbox_size=self.admission.size)
