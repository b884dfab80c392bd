"""Run ownership shared among processes over one PostgreSQL schema: leases, takeovers, the inbox.

``SharedOwnership`` is the implementation of ``ownership.Ownership`` for several processes; the
runtime chooses it at start when its store is a ``ClusterLog``. Runs this node owns are served
by the ``LocalOwnership`` it wraps; the rest goes through the database.

The storage side (fenced appends, the shared indexes, the SQL) is ``log/postgres_cluster.py``;
this module is what the running runtime does with it:

- **Lease.** Every ``lease_seconds / 3`` the node renews its lease. A renewal that finds the
  node fenced (another node took its runs while it was paused or cut off) stops the runtime with
  :class:`~actorflow.errors.LeaseLostError`; so does the first append that finds a run taken.
- **Takeover.** After each renewal the node claims runs whose owner's lease ran out, reads their
  events, folds them into its state, arms their timers, restarts their steps, and wakes them:
  what recovery does at start, for a few runs.
- **Forwarding** (``forwarding.py``). A resume for a run owned elsewhere goes straight to its
  owner over a peer link (this node listens for the others' links and publishes its address);
  keyed ones, and any whose link fails, go through the inbox.
- **Inbox** (``inbox.py``). A table of the schema; this module listens for the notifications
  that wake its two sides.
- **Remote reads.** A run or hook owned by another node is read from the database: the live-hook
  index for tokens, the run's events (folded here) for ``Run.status``/``result``, and the
  ``webhook_responded`` event for a manual webhook response, woken by ``NOTIFY`` and polled.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread

from ..errors import (
    LeaseLostError,
    StorageError,
)
from .core import events as ev
from .core.events import Event
from .forwarding import Forwarder
from .inbox import Inbox
from .journal import Journal
from .log.postgres_cluster import ClusterLog, Directory
from .log.postgres_streams import StreamReads
from .mailbox import Admission
from .ownership import LocalOwnership, PriorDelivery, StaleHookError
from .payloads import Payloads
from .peer_client import Peers
from .peer_server import PeerServer
from .response_waiters import WebhookResponses
from .state import HookEntry, RunState, State

__all__ = ["SharedOwnership", "StaleHookError", "routing_counts"]

logger = logging.getLogger("actorflow.cluster")

# Runs a takeover claims per round; the rest wait for the next round (a third of a lease).
_CLAIM_PER_ROUND = 2000
# Hooks of other nodes' runs remembered by token. A stale entry costs one failed delivery
# (the delivery re-checks the hook is live) and a fresh lookup, never a wrong delivery.
_HOOK_CACHE = 10_000


class SharedOwnership:
    """One node of a shared schema; owned by the runtime, run in its task group."""

    def __init__(
        self,
        store: ClusterLog,
        local: LocalOwnership,
        *,
        payloads: Payloads,
        responses: WebhookResponses,
        adopt_run: Callable[[RunState], None],
        fail: Callable[[BaseException], None],
        failure: Callable[[], BaseException | None],
        poll_interval: float,
        peer_bind: tuple[str, int] | None = ("127.0.0.1", 0),
    ) -> None:
        self.local = local
        self.state: State = local.state
        self.journal: Journal = local.journal
        self.admission: Admission = local.admission
        self.payloads = payloads
        self.responses = responses
        self._adopt_run = adopt_run
        self._fail = fail
        self._failure = failure
        self.store = store
        self.node_id = store.node_id
        self.lease_seconds = store.lease_seconds
        self.poll_interval = poll_interval
        self.directory = Directory(store.dsn, schema=store.schema, node_id=store.node_id)
        self.adopted = 0
        self._hook_cache: dict[str, HookEntry] = {}
        #: Readers of other nodes' runs' streams, woken by NOTIFY ``stream:<run id>``.
        self._stream_waiters: dict[str, anyio.Event] = {}
        self._stream_reads = StreamReads(self.directory)
        self.inbox = Inbox(
            self.directory,
            state=self.state,
            journal=self.journal,
            admission=self.admission,
            payloads=payloads,
            node_id=self.node_id,
            lease_seconds=self.lease_seconds,
            poll_interval=poll_interval,
            hook_cache=self._hook_cache,
        )
        #: Where this node listens for its peers (``None``: deliveries go by the inbox only).
        self.peer_bind = peer_bind
        self.forwarder: Forwarder | None = None
        self.peer_server: PeerServer | None = None

    # -- the services -------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._keep_lease)
            tg.start_soon(self._listen)
            tg.start_soon(self.inbox.run)
            if self.peer_bind is not None:
                await self._link_peers(tg, *self.peer_bind)
            task_status.started()

    async def _link_peers(self, tg: anyio.abc.TaskGroup, host: str, port: int) -> None:
        """Listen for the other nodes' links, publish the address, and forward from now on."""
        try:
            key = await anyio.to_thread.run_sync(self.inbox.peers.secret)
        except StorageError as exc:
            logger.warning("no peer links (deliveries go by the inbox): %s", exc)
            return
        peers = Peers(self.node_id, key, timeout=max(1.0, self.lease_seconds / 2))
        forwarder = Forwarder(self.inbox, peers, self.journal, self.payloads, self._hook_cache)
        self.peer_server = PeerServer(host, port, self.node_id, key, forwarder.take)
        address: str = await tg.start(self.peer_server.run)
        await tg.start(peers.run)
        self.forwarder = forwarder
        if host in ("", "0.0.0.0", "::"):  # reachable by the host's name, not the wildcard
            address = f"{socket.gethostname()}:{address.rpartition(':')[2]}"
        try:
            await anyio.to_thread.run_sync(self.inbox.peers.publish, address)
        except StorageError as exc:
            logger.warning("peer address not published (others use the inbox): %s", exc)

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
        failure = self._failure()
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
            self._fail(lost)
            raise lost
        return True

    async def take_over(self) -> int:
        """Claim runs whose owner is gone and rebuild them here; return how many were claimed."""
        try:
            groups = await anyio.to_thread.run_sync(
                self.directory.claim, _CLAIM_PER_ROUND, self.store.version
            )
        except StorageError as exc:
            logger.warning("takeover round failed, retrying next round: %s", exc)
            return 0
        adopted = self.adopt(groups)
        if adopted:
            logger.info("node %s took over %d run(s)", self.node_id, adopted)
            self.inbox.wake()  # their inbox may hold deliveries
        return len(groups)

    def adopt(self, groups: Sequence[tuple[str, Sequence[tuple[int, bytes]]]]) -> int:
        """Fold claimed runs' events into the state and start them, as recovery would."""
        state = self.state
        runs = state.runs
        decode = self.payloads.decode_plain
        adopted = 0
        for run_id, rows in groups:
            if not rows or run_id in runs:
                continue
            for position, record in rows:
                event = decode(record, position)
                state.apply(event)
                run = runs.get(event.run_id)
                if run is not None:
                    if event.type in ev.STREAM_EVENTS:
                        state.streams.durable(event)
                    else:
                        run.positions.append(position)
                        run.submitted += 1
            run = runs.get(run_id)
            if run is None or run.finished:
                continue
            adopted += 1
            self._adopt_run(run)
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
            pending = self.inbox.wake_pending
            if value != self.node_id or pending.is_set():
                return
            pending.set()
        elif kind in ("took", "drop", "full"):
            if not self.inbox.awaits(value):
                return
        elif kind == "stream":
            if value not in self._stream_waiters:
                return
        elif kind != "resp":
            return
        try:
            anyio.from_thread.run_sync(self._on_notification, kind, value)
        except RuntimeError:  # the loop is shutting down
            pass

    def _on_notification(self, kind: str, value: str) -> None:
        if kind == "wake":
            self.inbox.wake()
        elif kind == "resp":
            self.responses.poke(value)
        elif kind == "stream":
            waiter = self._stream_waiters.pop(value, None)
            if waiter is not None:
                waiter.set()
        else:
            self.inbox.announce(value, kind)

    # -- tokens and deliveries ----------------------------------------------------------------

    def decide_token(self, token: str) -> tuple[bool, str | None]:
        entry = self.state.tokens.get(token)
        if entry is not None:
            return True, entry.run_id
        return False, None  # other nodes' hooks are not in this node's index

    async def claim_token(self, token: str, run_id: str, hook_id: str) -> str | None:
        """Reserve a chosen token across nodes (one round trip, in a worker thread)."""
        return await anyio.to_thread.run_sync(self.directory.claim_token, token, run_id, hook_id)

    async def release_claim(self, token: str, run_id: str, hook_id: str) -> None:
        await anyio.to_thread.run_sync(self.directory.release_claim, token, run_id, hook_id)

    async def prior_delivery(
        self, token: str, key: str, live: HookEntry | None
    ) -> PriorDelivery | None:
        if live is not None:
            return None  # the inbox's delivery statement settles repeats, across nodes
        prior = await self.local.prior_delivery(token, key, None)
        if prior is not None and prior.hook is not None:
            return prior
        found = await self.find_delivery(token, key)
        if found is None:
            return None
        digest, event_id, hook = found
        return PriorDelivery(digest, event_id, hook)

    async def wait_response(
        self, run_id: str, request_event_id: str, waiter: anyio.Event
    ) -> Event | None:
        """Woken by the owner's ``NOTIFY`` (or this node's own append), and polled, so a lost
        notification only delays the answer."""
        while True:
            local = self.state.responses.get(request_event_id)
            if local is not None and local.position >= 0:
                return local
            found = await self.response(run_id, request_event_id)
            if found is not None:
                return found
            with anyio.move_on_after(self.poll_interval):
                await waiter.wait()
            if waiter.is_set():
                waiter = self.responses.renew(request_event_id)

    def stops_on_log_failure(self, exc: BaseException) -> bool:
        # A node that cannot write must also stop renewing its lease, so that other nodes take
        # its runs over.
        return True

    async def find_delivery(self, token: str, key: str) -> tuple[str, str, HookEntry] | None:
        """A delivery accepted with ``key`` on ``token``: its digest, event id and hook."""
        found = await anyio.to_thread.run_sync(self.directory.find_delivery, token, key)
        if found is None:
            return None
        digest, event_id, record = found
        created = self.payloads.decode_plain(record)
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
        local = self.state.tokens.get(token)
        if local is not None:
            return local
        if not fresh:
            cached = self._hook_cache.get(token)
            if cached is not None:
                return cached
        found = await anyio.to_thread.run_sync(self.directory.lookup, token)
        if found is None:
            return None
        if found.owner == self.node_id:
            # This node's own runs are in its index, which is ahead of the database: a hook
            # disposed here (its commit on the way) or still being claimed is not live.
            return self.state.tokens.get(token)
        entry = self._entry(self.payloads.decode_plain(found.created), token)
        entry.remote = found
        if len(self._hook_cache) >= _HOOK_CACHE:
            del self._hook_cache[next(iter(self._hook_cache))]
        self._hook_cache[token] = entry
        return entry

    async def deliver(
        self,
        entry: HookEntry,
        kind: str,
        data: dict[str, Any],
        key: bytes | str | None,
        encoded: Mapping[str, bytes] | None = None,
    ) -> str:
        """Deliver to ``entry``'s run: here for a run this node owns (unless a key must be
        checked across nodes), else through the inbox of its owner. The id of the event that
        holds it (an earlier one for a repeat of a keyed delivery).

        Raises: see ``Ownership.deliver``.
        """
        keyed = data.get("idempotency_key") is not None
        if entry.remote is None and not keyed:
            return await self.local.deliver(entry, kind, data, key, encoded)
        self.journal.check()
        # A keyed delivery is checked against the shared key index, by the inbox.
        if not keyed and self.forwarder is not None and entry.remote is not None and (
            entry.remote.peer is not None
        ):  # fmt: skip
            return await self.forwarder.deliver(entry, kind, data, key, encoded)
        event_id, _ = await self.inbox.deliver(entry, kind, data, key, encoded)
        return event_id

    async def response(self, run_id: str, request_event_id: str) -> Event | None:
        """The committed ``webhook_responded`` answering a request of a run on another node."""
        found = await anyio.to_thread.run_sync(
            self.directory.find_response, run_id, request_event_id
        )
        return None if found is None else self.payloads.decode_plain(found[1], found[0])

    # -- runs on other nodes ------------------------------------------------------------------

    async def snapshot(self, run_id: str) -> State | None:
        """A run owned by another node, folded from its committed events (``None``: no run).

        The state holds that one run, its live hooks among ``tokens``.
        """
        rows = await anyio.to_thread.run_sync(self.directory.run_events, run_id)
        if not rows:
            return None
        state = State()
        decode = self.payloads.decode_plain
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
        event = self.journal.event(run_id, ev.RUN_CANCELLED, None,
                                   {"reason": reason, "via": "inbox"})  # fmt: skip
        record = self.payloads.encode(event)
        await anyio.to_thread.run_sync(self.directory.enqueue, run_id, event.event_id, record)

    async def wake_remote(self, run_id: str, wait_ids: list[str]) -> None:
        """Ask the owner to fire sleeps now, through the inbox (as ``cancel`` does)."""
        for wait_id in wait_ids:
            event = self.journal.event(run_id, ev.WAIT_COMPLETED, wait_id,
                                       {"woken": True, "via": "inbox"})  # fmt: skip
            record = self.payloads.encode(event)
            await anyio.to_thread.run_sync(self.directory.enqueue, run_id, event.event_id, record)

    # -- streams of runs on other nodes (``streams.py``) ---------------------------------------

    async def stream_rows(
        self, run_id: str, namespace: str, after: int, skip: int, limit: int
    ) -> tuple[list[tuple[int, bytes]], str | None]:
        return await anyio.to_thread.run_sync(
            self._stream_reads.rows, run_id, namespace, after, skip, limit
        )

    def watch_stream(self, run_id: str) -> anyio.Event:
        # One event per run, shared by its readers, dropped when it fires. One left behind by
        # a reader that went away costs an entry until the run's next stream record.
        waiter = self._stream_waiters.get(run_id)
        if waiter is None:
            waiter = self._stream_waiters[run_id] = anyio.Event()
        return waiter

    async def stream_namespaces(self, run_id: str) -> list[str] | None:
        return await anyio.to_thread.run_sync(self._stream_reads.namespaces, run_id)

    def routing_counts(self) -> dict[str, int]:
        return routing_counts(self)

    def close(self) -> None:
        if self.forwarder is not None:
            logger.info("node %s forwarded %d deliveries to their owners; %d went by the inbox "
                        "after a failed forward", self.node_id, self.forwarder.forwarded,
                        self.forwarder.fell_back)  # fmt: skip
        self.directory.close()


def routing_counts(node: SharedOwnership) -> dict[str, int]:
    """What ``node`` routed since it started, for its metrics.

    ``sent_forwarded``: deliveries to other nodes' runs forwarded and answered by the owner;
    ``sent_inbox``: deliveries committed to the shared inbox, ``sent_fell_back`` of them after a
    forward failed; ``taken_forwarded`` / ``taken_inbox``: forwarded deliveries and inbox records
    this node took as their run's owner; ``links_refused``: peer links that failed
    authentication or broke the protocol; ``adopted``: runs taken over from expired nodes.
    """
    forwarder, server = node.forwarder, node.peer_server
    return {
        "sent_forwarded": forwarder.forwarded if forwarder is not None else 0,
        "sent_fell_back": forwarder.fell_back if forwarder is not None else 0,
        "sent_inbox": node.inbox.sent,
        "taken_forwarded": forwarder.taken if forwarder is not None else 0,
        "taken_inbox": node.inbox.ingested,
        "links_refused": server.refused if server is not None else 0,
        "adopted": node.adopted,
    }
