"""A runtime's part in a shared PostgreSQL schema: its lease, takeovers, and the inbox.

The storage side (fenced appends, the shared indexes, the SQL) is ``log/postgres_cluster.py``;
this module is what the running runtime does with it:

- **Lease.** Every ``lease_seconds / 3`` the node renews its lease. A renewal that finds the
  node fenced (another node took its runs while it was paused or cut off) stops the runtime with
  :class:`~actorflow.errors.LeaseLostError`; so does the first append that finds a run taken.
- **Takeover.** After each renewal the node claims runs whose owner's lease ran out, reads their
  events, folds them into its state, arms their timers, restarts their steps, and wakes them:
  what recovery does at start, for a few runs.
- **Inbox.** A resume for a run owned elsewhere is committed to the inbox by the receiving
  node, and the owner is woken by ``NOTIFY`` (each node also polls its inbox every
  ``poll_interval``, so a lost notification only delays a delivery). The owner claims the
  record and appends it unchanged (same event id, same encrypted bytes) to the run's history,
  or refuses it if the hook went away meanwhile. The receiving node answers when it hears
  which (``took``/``drop``, also polled): an acknowledgement means "in the run's history", as
  for a local run, and a delivery no owner claims within a lease is given up (503).
- **Remote reads.** A run or hook owned by another node is read from the database: the live-hook
  index for tokens, the run's events (folded here) for ``Run.status``/``result``, and the
  ``webhook_responded`` event for a manual webhook response, woken by ``NOTIFY`` and polled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread

from ..errors import (
    HookNotFoundError,
    IdempotencyKeyConflictError,
    LeaseLostError,
    LogWriteError,
    OverloadedError,
    StorageError,
)
from .core import events as ev
from .core.events import Event
from .ids import new_id
from .log.postgres_cluster import ClusterLog, Directory, ForeignHook
from .log.writer import Ticket
from .state import HookEntry, State

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["Cluster"]

logger = logging.getLogger("actorflow.cluster")

# Runs a takeover claims per round; the rest wait for the next round (a third of a lease).
_CLAIM_PER_ROUND = 2000
_INBOX_BATCH = 1000
# Hooks of other nodes' runs remembered by token. A stale entry costs one failed delivery
# (the delivery re-checks the hook is live) and a fresh lookup, never a wrong delivery.
_HOOK_CACHE = 10_000


class StaleHookError(HookNotFoundError):
    """A remembered hook is gone: look the token up again (never leaves the runtime twice)."""


def _retry_of(event: Event, first_event_id: str) -> Event:
    """The delivery a retry is answered by (for its outcome: same run and token)."""
    return Event(first_event_id, event.run_id, event.type, event.correlation_id,
                 event.created_at, event.data)  # fmt: skip


class Cluster:
    """One node of a shared schema; owned by the runtime, run in its task group."""

    def __init__(self, rt: Runtime, store: ClusterLog, *, poll_interval: float) -> None:
        self.rt = rt
        self.store = store
        self.node_id = store.node_id
        self.lease_seconds = store.lease_seconds
        self.poll_interval = poll_interval
        self.directory = Directory(store.dsn, schema=store.schema, node_id=store.node_id)
        self._wake = anyio.Event()
        # Inbox records submitted to the writer and not yet durable, by event id: a sender at
        # this node waits on their tickets.
        self._inflight: dict[str, Ticket] = {}
        self.adopted = 0
        self.ingested = 0
        self._hook_cache: dict[str, HookEntry] = {}
        self._wake_pending = threading.Event()
        #: Deliveries this node committed for another node's runs, awaiting their outcome,
        #: and the outcomes the owners announced (``took``, ``drop``, ``full``).
        self._outcomes: dict[str, anyio.Event] = {}
        self._announced: dict[str, str] = {}

    # -- the services -------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._keep_lease)
            tg.start_soon(self._listen)
            tg.start_soon(self._ingest_loop)
            task_status.started()

    async def _keep_lease(self) -> None:
        interval = self.lease_seconds / 3
        while True:
            await anyio.sleep(interval)
            if not await self._renew():
                return
            # A large takeover (a node with many runs died) goes on round after round,
            # bounded, renewing this node's own lease between rounds when it is due.
            renewed_at = anyio.current_time()
            for _ in range(50):
                if await self.take_over() < _CLAIM_PER_ROUND:
                    break
                if anyio.current_time() - renewed_at >= interval:
                    if not await self._renew():
                        return
                    renewed_at = anyio.current_time()

    async def _renew(self) -> bool:
        """Renew the lease; ``False`` once the runtime has failed (stop renewing).

        Raises:
            LeaseLostError: this node was fenced; the runtime is failed with it.
        """
        failure = self.rt.failure
        if failure is not None:
            # Stop renewing: the runs go to other nodes when the lease runs out. A lost lease
            # also ends the runtime (`async with` raises it), as a renewal would.
            if isinstance(failure, LeaseLostError):
                raise failure
            return False
        try:
            renewed = await anyio.to_thread.run_sync(self.directory.renew, self.lease_seconds)
        except StorageError as exc:
            # Keep serving: appends stay fenced, so if the lease runs out meanwhile and another
            # node takes the runs, the next append or renewal stops this runtime.
            logger.warning("lease renewal failed, retrying: %s", exc)
            return True
        if not renewed:
            lost = LeaseLostError(
                f"node {self.node_id} was fenced: its lease ran out (the process was paused or "
                "cut off from PostgreSQL) and other nodes took its runs over; this runtime "
                "stops, a restart joins as a new node"
            )
            self.rt.fail(lost)
            raise lost
        return True

    async def take_over(self) -> int:
        """Claim runs whose owner is gone and rebuild them here; return how many were claimed."""
        try:
            groups = await anyio.to_thread.run_sync(self.directory.claim, _CLAIM_PER_ROUND)
        except StorageError as exc:
            logger.warning("takeover round failed, retrying next round: %s", exc)
            return 0
        adopted = self.adopt(groups)
        if adopted:
            logger.info("node %s took over %d run(s)", self.node_id, adopted)
            self._wake.set()  # their inbox may hold deliveries
        return len(groups)

    def adopt(self, groups: Sequence[tuple[str, Sequence[tuple[int, bytes]]]]) -> int:
        """Fold claimed runs' events into the state and start them, as recovery would."""
        rt = self.rt
        state = rt.state
        runs = state.runs
        decode = rt.payloads.decode_plain
        adopted = 0
        for run_id, rows in groups:
            if not rows or run_id in runs:
                continue
            for position, record in rows:
                event = decode(record, position)
                state.apply(event)
                run = runs.get(event.run_id)
                if run is not None:
                    run.positions.append(position)
                    run.submitted += 1
            run = runs.get(run_id)
            if run is None or run.finished:
                continue
            adopted += 1
            for pending_id in list(run.pending or ()):
                timer = state.timers.get(pending_id)
                if timer is not None:
                    rt.timers.add(timer.wait_id, timer.resume_at)
                elif pending_id in state.steps:
                    rt.steps.start(pending_id)
            rt.supervisor.wake(run)
        self.adopted += adopted
        return adopted

    async def _listen(self) -> None:
        stop = threading.Event()
        try:
            await anyio.to_thread.run_sync(
                self.directory.listen, self._notified, stop, abandon_on_cancel=True
            )
        finally:
            stop.set()

    def _notified(self, payload: str) -> None:
        # In the listener's thread. Every node hears every notification of the schema, and a
        # busy owner is woken for each delivery: hop to the event loop only for this node's
        # wakes, and only when no wake is pending already.
        kind, _, value = payload.partition(":")
        if kind == "wake":
            if value != self.node_id or self._wake_pending.is_set():
                return
            self._wake_pending.set()
        elif kind in ("took", "drop", "full"):
            if value not in self._outcomes:  # a read of a dict: safe from this thread
                return
        elif kind != "resp":
            return
        try:
            anyio.from_thread.run_sync(self._on_notification, kind, value)
        except RuntimeError:  # the loop is shutting down
            pass

    def _on_notification(self, kind: str, value: str) -> None:
        if kind == "wake":
            self._wake.set()
        elif kind == "resp":
            self.rt.webhook_responses.poke(value)
        else:
            waiter = self._outcomes.get(value)
            if waiter is not None:
                # Sent by the owner's commit: as good as reading the outcome back.
                self._announced[value] = kind
                waiter.set()

    async def _ingest_loop(self) -> None:
        while True:
            with anyio.move_on_after(self.poll_interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            self._wake_pending.clear()  # before reading: a later notification wakes us again
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
        rows = await anyio.to_thread.run_sync(self.directory.fetch_inbox, _INBOX_BATCH)
        rt = self.rt
        refused: dict[str, list[str]] = {"drop": [], "full": []}
        later: list[str] = []
        # Claimed by the fetch; no await from the checks to the appends.
        for _, run_id, record in rows:
            event = rt.payloads.decode_plain(record)
            if run_id not in rt.state.runs:
                later.append(event.event_id)  # claimed a moment ago and not adopted yet
                continue
            verdict = self._verdict(event)
            if verdict == "take":
                self._submit(event, record)
            else:
                refused[verdict].append(event.event_id)
        await self._refuse(refused)
        if later:
            await anyio.to_thread.run_sync(self.directory.unclaim_inbox, later)
        return len(rows)

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
        rt = self.rt
        run = rt.state.runs.get(event.run_id)
        if run is None or run.finished:
            return "drop"
        if event.type != ev.HOOK_RECEIVED:
            return "take"
        entry = rt.state.tokens.get(str(event.data.get("token")))
        if entry is None or entry.hook_id != event.correlation_id:
            return "drop"
        # The bound a delivery at the owner meets (Runtime.deliver_external).
        if run.external + entry.untaken >= rt.mailbox_size:
            return "full"
        return "take"

    def _submit(self, event: Event, record: bytes) -> Ticket:
        rt = self.rt
        rt.writer.check()
        ticket: Ticket = rt.append(event, record=record)
        self._inflight[event.event_id] = ticket
        run = rt.state.runs.get(event.run_id)
        if run is not None and event.type == ev.HOOK_RECEIVED and event.data.get("external"):
            run.external += 1
        self.ingested += 1
        return ticket

    # -- tokens and deliveries ----------------------------------------------------------------

    def claim_token(self, token: str, run_id: str, hook_id: str) -> str | None:
        """Reserve a chosen token across nodes (blocking: one round trip); the holder's run."""
        return self.directory.claim_token(token, run_id, hook_id)

    async def find_delivery(self, token: str, key: str) -> tuple[str, str, HookEntry] | None:
        """A delivery accepted with ``key`` on ``token``: its digest, event id and hook."""
        found = await anyio.to_thread.run_sync(self.directory.find_delivery, token, key)
        if found is None:
            return None
        digest, event_id, record = found
        created = self.rt.payloads.decode_plain(record)
        return digest, event_id, self._entry(created, token)

    def _entry(self, created: Event, token: str) -> HookEntry:
        """A hook of another node's run, from its ``hook_created`` event."""
        entry = HookEntry(
            created.correlation_id or "",
            created.run_id,
            token,
            created.created_at,
            created.data.get("metadata"),
            created.data.get("webhook"),
        )
        entry.schema = created.data.get("schema")
        return entry

    async def lookup(self, token: str, *, fresh: bool = False) -> HookEntry | None:
        """The live hook holding ``token`` on any node, as a ``HookEntry`` marked remote.

        Remembered per token unless ``fresh``: a delivery to a hook that has gone since raises
        :class:`StaleHookError`, and the caller looks again with ``fresh=True``.
        """
        if not fresh:
            cached = self._hook_cache.get(token)
            if cached is not None:
                return cached
        found = await anyio.to_thread.run_sync(self.directory.lookup, token)
        if found is None:
            return None
        if found.owner == self.node_id:
            local = self.rt.state.tokens.get(token)
            if local is not None:
                return local
        entry = self._entry(self.rt.payloads.decode_plain(found.created), token)
        entry.remote = found
        if len(self._hook_cache) >= _HOOK_CACHE:
            del self._hook_cache[next(iter(self._hook_cache))]
        self._hook_cache[token] = entry
        return entry

    async def deliver(
        self, entry: HookEntry, kind: str, data: dict[str, Any], key: bytes | str | None = None
    ) -> tuple[str, bool]:
        """Commit a delivery to the inbox of the hook's run.

        Returns the event id that holds it and whether it is new (``False``: a retry with the
        same idempotency key and payload, answered by the first delivery).

        Raises:
            HookNotFoundError: the hook is gone (disposed, or its run ended) by now.
            IdempotencyKeyConflictError: the key was used before with another payload.
            OverloadedError: the run's inbox is full.
            StaleHookError: the same, for an entry this node remembered: look it up afresh.
            StorageError: the database failed (nothing committed, or the outcome unknown).
        """
        rt = self.rt
        remote = entry.remote
        if remote is None:
            # A hook of a run this node owns, delivered through the inbox for the shared
            # idempotency check: its hook_created must be committed first.
            await rt.writer.flush()
            remote = ForeignHook(entry.token, entry.run_id, entry.hook_id, self.node_id, b"")
        data = {**data, "via": "inbox"}
        event = Event(new_id("evnt_"), entry.run_id, kind, entry.hook_id, rt.clock(), data)
        record = rt.payloads.encode(event, key)
        idempotency_key = data.get("idempotency_key")
        # Listen for the owner's answer before it can be sent.
        self._outcomes.setdefault(event.event_id, anyio.Event())
        try:
            return await self._deliver(entry, event, record, remote, data, idempotency_key)
        finally:
            self._outcomes.pop(event.event_id, None)
            self._announced.pop(event.event_id, None)

    async def _deliver(
        self,
        entry: HookEntry,
        event: Event,
        record: bytes,
        remote: ForeignHook,
        data: dict[str, Any],
        idempotency_key: Any,
    ) -> tuple[str, bool]:
        rt = self.rt
        outcome = await anyio.to_thread.run_sync(
            lambda: self.directory.deliver(
                remote,
                event.event_id,
                record,
                key=None if idempotency_key is None else str(idempotency_key),
                digest=None if idempotency_key is None else str(data.get("digest")),
                mailbox_size=rt.mailbox_size,
            )
        )
        if outcome.status == "gone":
            if self._hook_cache.get(entry.token) is entry:
                del self._hook_cache[entry.token]
                raise StaleHookError(entry.token)
            raise HookNotFoundError(entry.token)
        if outcome.status == "full":
            raise OverloadedError(
                f"the inbox of run {entry.run_id} is full ({rt.mailbox_size} deliveries waiting "
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
        await self._settle(settled, check_first=outcome.status != "accepted")
        return outcome.event_id, outcome.status == "accepted"

    async def _append_now(self, event: Event, record: bytes) -> None:
        """Take a delivery to a run this node owns into its history now; wait until durable.

        Raises:
            HookNotFoundError: the hook went away before it was taken (nothing delivered).
        """
        if event.event_id not in self._inflight and event.run_id in self.rt.state.runs:
            await self._take([(event, record)])
        ticket = self._inflight.get(event.event_id)
        if ticket is not None:
            await ticket.wait()
        else:  # refused by _take (announced to us), or taken by the inbox poll first
            await self._settle(event, check_first=True)

    async def _settle(self, event: Event, *, check_first: bool) -> None:
        """Wait for the owner's verdict on a delivery; raise if it was refused.

        Raises:
            HookNotFoundError: refused: the hook went away first (nothing delivered).
            OverloadedError: refused: the run's mailbox is full, or no owner took it in time
                (nothing delivered, in both cases); retry shortly.
            StorageError: see ``_outcome``.
        """
        outcome = await self._outcome(event.event_id, check_first=check_first)
        if outcome == "drop":
            raise HookNotFoundError(str(event.data.get("token")))
        if outcome == "full":
            raise OverloadedError(
                f"the mailbox of run {event.run_id} is full ({self.rt.mailbox_size} payloads "
                "waiting for the workflow to take them); retry shortly",
                retry_after=1.0,
            )

    async def _outcome(self, event_id: str, *, check_first: bool = False) -> str:
        """Wait until the owner has taken a delivery into the run's history (``took``) or
        refused it (``drop``, ``full``). Woken by the owner's ``NOTIFY``, and polled (a refusal
        seen only by polling reads as ``drop``).

        Raises:
            OverloadedError: no owner took it within a lease; it was given up (nothing
                committed), so the sender may retry.
            StorageError: an owner claimed it and then said nothing for three leases: its
                outcome is unknown.
        """
        waiter = self._outcomes.setdefault(event_id, anyio.Event())
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
                    waiter = self._outcomes[event_id] = anyio.Event()
                in_history, pending = await anyio.to_thread.run_sync(
                    self.directory.delivery_state, event_id
                )
                if in_history:
                    return "took"
                if not pending:
                    return "drop"
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
            self._outcomes.pop(event_id, None)
            self._announced.pop(event_id, None)

    async def response(self, run_id: str, request_event_id: str) -> Event | None:
        """The committed ``webhook_responded`` answering a request of a run on another node."""
        found = await anyio.to_thread.run_sync(
            self.directory.find_response, run_id, request_event_id
        )
        return None if found is None else self.rt.payloads.decode_plain(found[1], found[0])

    # -- runs on other nodes ------------------------------------------------------------------

    async def snapshot(self, run_id: str) -> State | None:
        """A run owned by another node, folded from its committed events (``None``: no run).

        The state holds that one run, its live hooks among ``tokens``.
        """
        rows = await anyio.to_thread.run_sync(self.directory.run_events, run_id)
        if not rows:
            return None
        state = State()
        decode = self.rt.payloads.decode_plain
        for position, record in rows:
            state.apply(decode(record, position))
        return state if run_id in state.runs else None

    async def start_key(self, key: str) -> str | None:
        return await anyio.to_thread.run_sync(self.directory.start_key, key)

    async def reserve_start_key(self, key: str, run_id: str, workflow: str) -> str:
        return await anyio.to_thread.run_sync(
            self.directory.reserve_start_key, key, run_id, workflow
        )

    async def cancel(self, run_id: str, reason: str | None) -> None:
        """Ask the owner of a run on another node to cancel it (through the inbox)."""
        event = Event(new_id("evnt_"), run_id, ev.RUN_CANCELLED, None, self.rt.clock(),
                      {"reason": reason, "via": "inbox"})  # fmt: skip
        record = self.rt.payloads.encode(event)
        await anyio.to_thread.run_sync(self.directory.enqueue, run_id, event.event_id, record)

    def close(self) -> None:
        self.directory.close()
