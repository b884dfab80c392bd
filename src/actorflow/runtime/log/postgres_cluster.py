"""Many runtimes on one PostgreSQL schema: run ownership, leases, and the shared indexes.

Each runtime process is a *node*. It holds a lease in ``nodes`` that it renews; each unfinished
run has one owner in ``runs.owner``, the only node that holds the run's actor and the only one
that appends the run's events. The rules that keep that true:

- **Appends are fenced.** ``ClusterLog.append`` locks the rows of the batch's runs (``FOR SHARE``)
  and checks that this node still owns every one of them, in the transaction that inserts the
  events. A node whose runs were taken over cannot append to them: its store fails, and with it
  the runtime (:class:`~actorflow.errors.LeaseLostError`), before anything is acknowledged.
- **Takeover.** A run whose owner's lease ran out (or that has no owner) is claimed with
  ``FOR UPDATE SKIP LOCKED``, so two nodes never claim one run, and runs with the earliest due
  timers first. The claimer also fences the dead node, so a node that was only paused (a stop, a
  long GC, a partition) finds on waking that it must stop, instead of acting as an owner.
- **Indexes commit with the events.** The append that inserts ``hook_created`` inserts the
  token into ``hooks`` (its primary key makes a token unique among live hooks across every
  node), ``hook_disposed`` and the end of a run delete it, ``wait_created`` adds the timer, and a
  run's status follows its events: all in the same transaction.
- **Outside deliveries go through the owner.** A node that receives a resume or webhook for a
  run it does not own commits the ``hook_received`` record to ``inbox`` (locking the live hook's
  row, so the hook cannot be disposed under it) and sends ``NOTIFY``. The owner claims the row
  (``taken_by``), then appends the record to the run's history, deleting the row in the same
  transaction, and notifies ``took``; or, if the hook went away meanwhile, deletes the row (and
  frees its idempotency key) and notifies ``drop``. The receiving node answers only then: 2xx
  once the delivery is in the history, "not found" if it was refused. If no owner claims it
  within a lease, the sender gives it up (deleting the unclaimed row) and answers 503: nothing
  was delivered. So every acknowledged delivery is in its run's history exactly once, in the
  order acknowledged, whoever owns the run by then. The owner also polls the inbox, and
  senders poll the outcome, so a lost notification delays a delivery and never drops it. A
  single writer per run keeps the order in which the owner fed events to the workflow equal to
  the order a replay feeds them.

:class:`Directory` holds the operations that are not appends (lease renewal, claims, lookups,
inbox), on connections of its own, so they never wait behind a batch being committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import orjson
import psycopg
from psycopg import sql

from actorflow.errors import LeaseLostError, StorageError, WorkflowRunNotFoundError
from actorflow.runtime.log.postgres import (
    _SCAN_BATCH,
    PostgresLog,
    _Columns,
    _connect,
    _is_text,
)
from actorflow.runtime.log.postgres_retention import PruneReport, prune_expired
from actorflow.runtime.log.store import Durability, Position, ScanReport

__all__ = ["ClusterLog", "Delivery", "Directory", "ForeignHook", "channel_name"]

_T = TypeVar("_T")

logger = logging.getLogger("actorflow.cluster")

_TERMINAL = {"run_completed": "completed", "run_failed": "failed", "run_cancelled": "cancelled"}
# Runs claimed per statement at takeover; each claim reads the runs' events right after.
_CLAIM_BATCH = 5000


def channel_name(schema: str) -> str:
    """The ``LISTEN`` channel of a schema's nodes (a PostgreSQL identifier, at most 63 bytes)."""
    return f"actorflow_{schema}"[:63]


@dataclass(slots=True)
class _Changes:
    """What a batch changes besides ``events``: the rows of the shared indexes."""

    columns: _Columns = field(default_factory=lambda: _Columns([], [], [], []))
    created_runs: dict[str, str] = field(default_factory=dict)  # run id -> workflow
    # run id -> (created_at, version) of the created runs, for listing
    created_meta: dict[str, tuple[float, str | None]] = field(default_factory=dict)
    # run id -> [started_at, ended_at] set by the batch (None: unchanged)
    times: dict[str, list[float | None]] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)  # run id -> its latest status
    ended: list[str] = field(default_factory=list)
    ended_at: dict[str, float] = field(default_factory=dict)  # run id -> its end's time
    hooks_added: dict[str, tuple[str, str, str, str]] = field(default_factory=dict)
    hooks_removed: list[tuple[str, str]] = field(default_factory=list)  # (token, hook id)
    timers_added: list[tuple[str, str, float]] = field(default_factory=list)
    timers_removed: list[str] = field(default_factory=list)
    from_inbox: list[str] = field(default_factory=list)  # event ids
    responses: list[str] = field(default_factory=list)  # request event ids answered
    streams: set[str] = field(default_factory=set)  # runs with stream records in the batch


def _changes(records: Sequence[bytes]) -> _Changes:
    """Parse each record and collect the index changes of the batch.

    Raises:
        ValueError: a record is not an actorflow event (nothing was written).
    """
    out = _Changes()
    for index, record in enumerate(records):
        try:
            fields = orjson.loads(record)
        except orjson.JSONDecodeError:
            fields = None
        if (
            type(fields) is not list
            or len(fields) != 6
            or not all(_is_text(value) for value in fields[:3])
            or not (fields[3] is None or _is_text(fields[3]))
            or type(fields[5]) is not dict
        ):
            raise ValueError(
                f"record {index} of the batch is not an actorflow event "
                "([event_id, run_id, type, correlation_id, created_at, data] with text ids): "
                "the PostgreSQL log indexes events by their ids; nothing was written"
            )
        event_id, run_id, kind, corr, created_at, data = fields
        columns = out.columns
        columns.event_ids.append(event_id)
        columns.run_ids.append(run_id)
        columns.types.append(kind)
        columns.correlation_ids.append(corr)
        if data.get("via") == "inbox":  # a delivery or a cancel another node committed
            out.from_inbox.append(event_id)
        if kind == "run_created":
            out.created_runs[run_id] = str(data.get("workflow", ""))
            version = data.get("version")
            out.created_meta[run_id] = (
                float(created_at),
                None if version is None else str(version),
            )
            out.status[run_id] = "pending"
        elif kind == "run_started":
            out.status[run_id] = "running"
            out.times.setdefault(run_id, [None, None])[0] = float(created_at)
        elif kind in _TERMINAL:
            out.status[run_id] = _TERMINAL[kind]
            out.ended.append(run_id)
            out.times.setdefault(run_id, [None, None])[1] = float(created_at)
            # Retention counts from here; a record without a numeric time counts from now.
            ended_at = created_at if type(created_at) in (int, float) else time.time()
            out.ended_at.setdefault(run_id, float(ended_at))
        elif kind == "hook_created":
            token = str(data.get("token"))
            out.hooks_added[token] = (token, run_id, corr or "", event_id)
        elif kind == "hook_disposed":
            # Net effect per token: one statement cannot insert the same token twice.
            token, hook_id = str(data.get("token")), corr or ""
            added = out.hooks_added.get(token)
            if added is not None and added[2] == hook_id:
                del out.hooks_added[token]
            out.hooks_removed.append((token, hook_id))
        elif kind == "wait_created":
            out.timers_added.append((corr or "", run_id, float(data.get("resume_at", 0.0))))
        elif kind in ("wait_completed", "wait_cancelled"):
            out.timers_removed.append(corr or "")
        elif kind == "webhook_responded":
            out.responses.append(str(data.get("request_event_id")))
        elif kind in ("stream_chunk", "stream_closed"):
            out.streams.add(run_id)
    return out


class ClusterLog(PostgresLog):
    """The PostgreSQL event store of one node among many sharing a schema.

    ``scan()`` registers the node, claims every run that has no live owner, and yields those
    runs' events (not the whole log: other nodes own the rest). ``append()`` is fenced and keeps
    the shared indexes (see the module docstring). ``close()`` hands the node's runs back, so
    another node (or this one, restarted) takes them at once instead of after the lease.
    """

    def __init__(
        self,
        dsn: str,
        *,
        node_id: str,
        durability: Durability = "fsync",
        schema: str = "actorflow",
        migrate: bool = True,
        lease_seconds: float = 10.0,
        version: str | None = None,
    ) -> None:
        super().__init__(dsn, durability=durability, schema=schema, migrate=migrate)
        if not node_id or "\x00" in node_id:
            raise ValueError("node_id must be a non-empty string without NUL")
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be positive, not {lease_seconds!r}")
        self.node_id = node_id
        self.lease_seconds = lease_seconds
        #: Claim only runs started under this version (``None``: any run).
        self.version = version
        self._cq = _ClusterQueries(schema)

    def _scan(self) -> Generator[tuple[Position, bytes], None, None]:
        count = 0
        try:
            conn = self._open_writer()
            conn.execute(self._cq.register, (self.node_id, self.lease_seconds))
            conn.commit()
            while True:
                claimed = claim_orphans(conn, self._cq, self.node_id, _CLAIM_BATCH,
                                        self.version)  # fmt: skip
                if not claimed:
                    break
                with conn.cursor("actorflow_scan", binary=True) as cursor:
                    cursor.itersize = _SCAN_BATCH
                    cursor.execute(self._cq.run_events, (claimed,))
                    for position, _, record in cursor:
                        count += 1
                        yield position, record
                conn.commit()
        except psycopg.Error as exc:
            message = f"cannot read the PostgreSQL event log {self._where}: {exc}"
            raise StorageError(message) from exc
        self._report = ScanReport(records=count)

    def append(self, records: Sequence[bytes]) -> list[Position]:
        """Insert records and their index changes in the open transaction, fenced.

        Raises:
            LeaseLostError: another node owns one of the batch's runs now (nothing of the batch
                commits; the store accepts nothing more).
            LogWriteError: the insert failed; the store accepts nothing more.
            ValueError: a record is not an actorflow event (nothing was written).
        """
        conn = self._check_writable()
        if not records:
            return []
        changes = _changes(records)
        q = self._cq
        node = self.node_id
        try:
            columns = changes.columns
            owned_before = [r for r in set(columns.run_ids) if r not in changes.created_runs]
            if owned_before:
                found = conn.execute(q.check_owner, (owned_before, node)).fetchall()
                if len(found) != len(owned_before):
                    lost = sorted(set(owned_before) - {row[0] for row in found})
                    raise self._lost(lost)
            if changes.created_runs:
                meta = [changes.created_meta[r] for r in changes.created_runs]
                conn.execute(
                    q.insert_runs,
                    (
                        list(changes.created_runs),
                        list(changes.created_runs.values()),
                        [m[0] for m in meta],
                        [m[1] for m in meta],
                        node,
                    ),
                )
            positions = self._insert_records(conn, columns, records)
            if changes.status:
                none: list[float | None] = [None, None]
                times = [changes.times.get(r, none) for r in changes.status]
                ended_at = [changes.ended_at.get(run_id) for run_id in changes.status]
                conn.execute(
                    q.set_status,
                    (
                        list(changes.status),
                        list(changes.status.values()),
                        [t[0] for t in times],
                        [t[1] for t in times],
                        ended_at,
                    ),
                )
            if changes.hooks_removed:
                tokens, hook_ids = map(list, zip(*changes.hooks_removed, strict=True))
                conn.execute(q.remove_hooks, (tokens, hook_ids))
            if changes.hooks_added:
                added = changes.hooks_added.values()
                tokens, runs, hook_ids, events = map(list, zip(*added, strict=True))
                conn.execute(q.add_hooks, (tokens, runs, hook_ids, events))
            if changes.timers_added:
                waits, runs, due = map(list, zip(*changes.timers_added, strict=True))
                conn.execute(q.add_timers, (waits, runs, due))
            if changes.timers_removed:
                conn.execute(q.remove_timers, (changes.timers_removed,))
            if changes.ended:
                conn.execute(q.end_runs_hooks, (changes.ended,))
                conn.execute(q.end_runs_timers, (changes.ended,))
            if changes.from_inbox:
                taken = conn.execute(q.take_inbox, (changes.from_inbox, node, q.channel)).fetchall()
                if len(taken) != len(changes.from_inbox):
                    raise self._lost(sorted(set(columns.run_ids)))
            if changes.responses:
                conn.execute(q.notify_responses, (q.channel, changes.responses))
            if changes.streams:  # wakes readers on other nodes (sent at commit)
                conn.execute(q.notify_streams, (q.channel, sorted(changes.streams)))
        except LeaseLostError:
            raise
        except psycopg.Error as exc:
            raise self._fail("append", exc) from exc
        with self._pending_lock:
            self._pending.update(zip(positions, records, strict=True))
        self._dirty = True
        return positions

    def prune_expired(self, ended_before: float, *, batch_size: int = 1000) -> PruneReport:
        """Delete everything of the runs that ended before ``ended_before`` (unix seconds, in the
        runtime's clock), ``batch_size`` runs per transaction, then long-dead nodes' rows; see
        ``postgres_retention``. Blocking: call it from a worker thread. Safe beside appends
        (which it never blocks) and beside other nodes' prunes (they split the runs).

        Raises:
            ValueError: ``ended_before`` is not a finite number, or ``batch_size`` not positive.
            StorageError: the database failed (committed batches stay deleted, runs stay whole).
        """
        if self._closed:
            raise RuntimeError("this PostgresLog is closed")
        return prune_expired(
            self.dsn, self.schema, ended_before, batch_size=batch_size, where=self._where
        )

    def _lost(self, runs: list[str]) -> LeaseLostError:
        shown = ", ".join(runs[:5]) + (f" and {len(runs) - 5} more" if len(runs) > 5 else "")
        error = LeaseLostError(
            f"node {self.node_id} no longer owns run(s) {shown} in PostgreSQL {self._where}: "
            "its lease ran out and another node took them over; nothing of this batch was "
            "committed, and this runtime must stop (a restart joins as a new node)"
        )
        self._failure = psycopg.OperationalError(str(error))
        with self._pending_lock:
            self._pending.clear()
        return error

    def _release(self) -> None:
        conn = self._conn
        if conn is not None and self._failure is None and not conn.closed and not conn.broken:
            # A clean stop: give the runs back now rather than when the lease runs out.
            try:
                conn.rollback()
                conn.execute(self._cq.release_runs, (self.node_id,))
                conn.execute(self._cq.forget_node, (self.node_id,))
                conn.commit()
            except psycopg.Error as exc:
                logger.warning("could not hand runs back at close (they wait for the lease): %s",
                               exc)  # fmt: skip
        super()._release()


#: Runs claimed, each with its events (position, record) in order.
_Claimed = list[tuple[str, list[tuple[Position, bytes]]]]


def claim_orphans(
    conn: psycopg.Connection[Any],
    q: _ClusterQueries,
    node_id: str,
    limit: int,
    version: str | None = None,
) -> list[str]:
    """Claim up to ``limit`` unfinished runs with no live owner; commit; return their ids.

    With a ``version``, only runs started under that version (and rows with no events yet, to
    drop them) are claimed. The owners whose lease ran out are fenced in the same transaction.
    """
    with conn.transaction():
        conn.execute(q.fence_dead)
        args = (version, version, limit, node_id)
        claimed = [row[0] for row in conn.execute(q.claim, args).fetchall()]
        if claimed:
            # A start_once whose node died between reserving its key and writing run_created
            # left a row with no events: drop it, so a retry of that start can succeed.
            conn.execute(q.drop_phantoms, (claimed,))
            # Deliveries the dead owner had claimed but not appended: the new owner's now.
            conn.execute(q.release_inbox, (claimed,))
    return claimed


@dataclass(frozen=True, slots=True)
class ForeignHook:
    """A live hook as the shared index shows it: its run, owner, and ``hook_created`` record."""

    token: str
    run_id: str
    hook_id: str
    owner: str | None
    created: bytes
    #: The owner's peer listener (``host:port``), if it has one: deliveries go there directly.
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of :meth:`Directory.deliver`."""

    status: str  # "accepted", "duplicate", "conflict", "gone", "full"
    event_id: str = ""
    owner: str | None = None


class Directory:
    """A node's side connections: leases, claims, lookups and the inbox.

    Thread-safe: each call borrows a connection of a small pool (one per concurrent caller, at
    most ``size``), so lookups and deliveries from many requests run side by side.
    """

    def __init__(self, dsn: str, *, schema: str, node_id: str, size: int = 4) -> None:
        self.dsn = dsn
        self.schema = schema
        self.node_id = node_id
        self.q = _ClusterQueries(schema)
        self._where = f"(schema {schema})"
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(size)
        self._closed = False
        # Token claims run on the event loop's thread (a workflow step cannot wait): they get a
        # connection of their own, so they never queue behind the pool's longer calls.
        self._claimer: psycopg.Connection[Any] | None = None
        self._claimer_lock = threading.Lock()

    # -- the pool ----------------------------------------------------------------------------

    def _borrow(self) -> psycopg.Connection[Any]:
        self._slots.acquire()
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed or conn.broken:
            try:
                conn = _connect(self.dsn, self._where, autocommit=True)
            except BaseException:
                self._slots.release()
                raise
        return conn

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if self._closed or conn.broken:
                conn.close()
            else:
                self._idle.append(conn)
        self._slots.release()

    def _call(self, what: str, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        conn = self._borrow()
        try:
            return fn(conn)
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL {what} failed {self._where}: {exc}") from exc
        finally:
            self._give_back(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        with self._claimer_lock:
            if self._claimer is not None:
                self._claimer.close()
                self._claimer = None

    # -- leases and takeover ------------------------------------------------------------------

    def renew(self, lease_seconds: float) -> bool:
        """Extend this node's lease; ``False`` if it was fenced (or its row is gone)."""

        def run(conn: psycopg.Connection[Any]) -> bool:
            row = conn.execute(self.q.renew, (lease_seconds, self.node_id)).fetchone()
            return row is not None

        return bool(self._call("lease renewal", run))

    def claim(self, limit: int, version: str | None = None) -> _Claimed:
        """Claim runs without a live owner (of ``version``, if given) and read their events."""

        def run(conn: psycopg.Connection[Any]) -> list[tuple[str, list[tuple[Position, bytes]]]]:
            claimed = claim_orphans(conn, self.q, self.node_id, limit, version)
            return _group(claimed, conn.execute(self.q.run_events, (claimed,)).fetchall())

        if self._closed:
            return []
        result: list[tuple[str, list[tuple[Position, bytes]]]] = self._call("takeover", run)
        return result

    def run_events(self, run_id: str) -> list[tuple[Position, bytes]]:
        """Every event of one run, in log order (for reading a run another node owns)."""

        def run(conn: psycopg.Connection[Any]) -> list[tuple[Position, bytes]]:
            return [(p, bytes(r)) for p, _, r in conn.execute(self.q.run_events, ([run_id],))]

        result: list[tuple[Position, bytes]] = self._call("read", run)
        return result

    def owner_of(self, run_id: str) -> tuple[str, str | None] | None:
        """``(status, owner)`` of a run, or ``None`` if no run has this id."""

        def run(conn: psycopg.Connection[Any]) -> tuple[str, str | None] | None:
            row = conn.execute(self.q.run_owner, (run_id,)).fetchone()
            return None if row is None else (str(row[0]), row[1])

        result: tuple[str, str | None] | None = self._call("read", run)
        return result

    # -- tokens --------------------------------------------------------------------------------

    def claim_token(self, token: str, run_id: str, hook_id: str) -> str | None:
        """Reserve a chosen token for a run's new hook; the run holding it instead, if any.

        Raises:
            StorageError: the database failed (twice: a lost connection is reopened once).
        """
        return self._on_claimer(
            "token claim", lambda conn: self._claim_token(conn, token, run_id, hook_id)
        )

    def release_claim(self, token: str, run_id: str, hook_id: str) -> None:
        """Give back a claim whose hook was never created (its run ended meanwhile).

        Raises:
            StorageError: the database failed (twice: a lost connection is reopened once).
        """
        self._on_claimer(
            "token release",
            lambda conn: conn.execute(self.q.release_claim, (token, run_id, hook_id)),
        )

    def _on_claimer(self, what: str, fn: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        # Both uses may repeat: the claim is an upsert keyed by token and run, the release a
        # delete of that row. So a lost connection is reopened once and the call made again.
        with self._claimer_lock:
            for attempt in (1, 2):
                conn = self._claimer
                try:
                    if conn is None or conn.closed or conn.broken:
                        conn = self._claimer = _connect(self.dsn, self._where, autocommit=True)
                    return fn(conn)
                except psycopg.Error as exc:
                    if attempt == 2 or (conn is not None and not conn.broken):
                        raise StorageError(
                            f"PostgreSQL {what} failed {self._where}: {exc}"
                        ) from exc
        raise AssertionError("unreachable")

    def _claim_token(
        self, conn: psycopg.Connection[Any], token: str, run_id: str, hook_id: str
    ) -> str | None:
        for _ in range(3):
            row = conn.execute(self.q.claim_token, (token, run_id, hook_id)).fetchone()
            if row is not None:
                return None
            holder = conn.execute(self.q.token_holder, (token,)).fetchone()
            if holder is not None:
                return str(holder[0])
        return None  # released three times in a row by its holder: taken as free

    def lookup(self, token: str) -> ForeignHook | None:
        """The live hook holding ``token`` (``None`` if none, or if not yet created durably)."""

        def run(conn: psycopg.Connection[Any]) -> ForeignHook | None:
            row = conn.execute(self.q.lookup, (token,)).fetchone()
            if row is None or row[3] is None:
                return None
            return ForeignHook(token, row[0], row[1], row[2], bytes(row[3]), row[4])

        return cast(ForeignHook | None, self._call("hook lookup", run))

    # -- the inbox ------------------------------------------------------------------------------

    def deliver(
        self,
        hook: ForeignHook,
        event_id: str,
        record: bytes,
        *,
        key: str | None,
        digest: str | None,
        mailbox_size: int,
        forwarded: bool = False,
    ) -> Delivery:
        """Commit a ``hook_received`` record to the inbox of the hook's run, and wake its owner.

        Checked in the same transaction: the hook is still live (its row is locked, so it cannot
        be disposed before the commit), the idempotency key, and the run's inbox bound.
        ``forwarded``: sent to the owner first (unkeyed only; see ``postgres_peers``).
        """
        q = self.q
        if key is None:
            return self._deliver_unkeyed(hook, event_id, record, mailbox_size, forwarded)

        def run(conn: psycopg.Connection[Any]) -> Delivery:
            with conn.transaction():
                live = conn.execute(q.lock_hook, (hook.token, hook.hook_id)).fetchone()
                if live is None:
                    # Gone since: a retry of a delivery it accepted still gets its answer.
                    found = conn.execute(q.find_key, (hook.token, key)).fetchone()
                    if found is not None and found[0] == hook.hook_id:
                        status = "duplicate" if found[1] == digest else "conflict"
                        return Delivery(status, str(found[2]))
                    return Delivery("gone")
                owner = live[0]
                if key is not None:
                    prior = conn.execute(
                        q.add_key, (hook.token, key, hook.hook_id, digest, event_id)
                    ).fetchone()
                    if prior is None:
                        found = conn.execute(q.find_key, (hook.token, key)).fetchone()
                        if found is not None and found[0] == hook.hook_id:
                            status = "duplicate" if found[1] == digest else "conflict"
                            return Delivery(status, str(found[2]), owner)
                        # The key was spent on an earlier hook with this token: reuse it.
                        conn.execute(q.reuse_key, (hook.hook_id, digest, event_id, hook.token, key))
                waiting = conn.execute(q.inbox_count, (hook.run_id,)).fetchone()
                if waiting is not None and waiting[0] >= mailbox_size:
                    raise _Full
                conn.execute(q.add_inbox, (hook.run_id, hook.token, event_id, record))
                if owner is not None and owner != self.node_id:
                    conn.execute(q.notify, (q.channel, f"wake:{owner}"))
                return Delivery("accepted", event_id, owner)

        try:
            result: Delivery = self._call("delivery", run)
        except _Full:
            return Delivery("full")
        return result

    def _deliver_unkeyed(
        self, hook: ForeignHook, event_id: str, record: bytes, mailbox_size: int, forwarded: bool
    ) -> Delivery:
        # The same checks as the keyed path, in one statement: one round trip, not six.
        params = {
            "token": hook.token,
            "hook": hook.hook_id,
            "run": hook.run_id,
            "event": event_id,
            "record": record,
            "bound": mailbox_size,
            "channel": self.q.channel,
            "me": self.node_id,
            "forwarded": forwarded,
        }

        def run(conn: psycopg.Connection[Any]) -> Delivery:
            row = conn.execute(self.q.deliver_unkeyed, params).fetchone()
            assert row is not None
            owner, live, inserted = row[0], row[1], row[2]
            if not live:
                return Delivery("gone")
            if not inserted:
                return Delivery("full")
            return Delivery("accepted", event_id, owner)

        return cast(Delivery, self._call("delivery", run))

    def find_delivery(self, token: str, key: str) -> tuple[str, str, bytes] | None:
        """A delivery accepted with ``key`` on ``token``: its digest, its event id, and the
        ``hook_created`` record of the hook it went to (which may be gone by now)."""

        def run(conn: psycopg.Connection[Any]) -> tuple[str, str, bytes] | None:
            row = conn.execute(self.q.find_delivery, (token, key)).fetchone()
            return None if row is None else (str(row[0]), str(row[1]), bytes(row[2]))

        result: tuple[str, str, bytes] | None = self._call("read", run)
        return result

    def claim_inbox(self, event_ids: list[str]) -> list[str]:
        """Claim inbox records for appending (their senders can no longer give them up)."""

        def run(conn: psycopg.Connection[Any]) -> list[str]:
            rows = conn.execute(self.q.claim_inbox, (self.node_id, event_ids)).fetchall()
            return [str(row[0]) for row in rows]

        result: list[str] = self._call("inbox claim", run)
        return result

    def drop_inbox(self, event_ids: list[str], reason: str = "drop") -> None:
        """Refuse inbox records: ``drop``, their hook is gone (their senders answer "not
        found"); ``full``, the run's mailbox is (their senders answer "retry later")."""

        def run(conn: psycopg.Connection[Any]) -> None:
            params = {
                "ids": event_ids,
                "me": self.node_id,
                "channel": self.q.channel,
                "reason": reason,
            }
            conn.execute(self.q.drop_inbox, params).fetchall()

        self._call("inbox drop", run)

    def cancel_delivery(self, event_id: str) -> bool:
        """Give up a delivery no owner has claimed yet; ``True`` if it is now undone."""

        def run(conn: psycopg.Connection[Any]) -> bool:
            row = conn.execute(self.q.cancel_inbox, (event_id,)).fetchone()
            return row is not None and row[0] == 1

        return bool(self._call("delivery", run))

    def delivery_state(self, event_id: str) -> tuple[bool, bool]:
        """``(in the run's history, still in the inbox)`` for a delivery's event id."""

        def run(conn: psycopg.Connection[Any]) -> tuple[bool, bool]:
            row = conn.execute(self.q.delivery_state, (event_id, event_id)).fetchone()
            assert row is not None
            return bool(row[0]), bool(row[1])

        result: tuple[bool, bool] = self._call("read", run)
        return result

    def enqueue(self, run_id: str, event_id: str, record: bytes) -> None:
        """Commit a record (not a hook delivery: a cancel) to a run's inbox, and wake its owner.

        Raises:
            WorkflowRunNotFoundError: no run has this id.
        """
        q = self.q

        def run(conn: psycopg.Connection[Any]) -> bool:
            with conn.transaction():
                row = conn.execute(q.run_owner_held, (run_id,)).fetchone()
                if row is None:
                    return False
                conn.execute(q.add_inbox, (run_id, "", event_id, record))
                if row[1] is not None and row[1] != self.node_id:
                    conn.execute(q.notify, (q.channel, f"wake:{row[1]}"))
                return True

        if not self._call("delivery", run):
            raise WorkflowRunNotFoundError(run_id)

    def fetch_inbox(self, limit: int) -> list[tuple[int, str, bytes, bool]]:
        """Claim the unclaimed inbox rows of runs this node owns, oldest first:
        ``(id, run_id, record, forwarded)``. Their senders can no longer give them up."""

        def run(conn: psycopg.Connection[Any]) -> list[tuple[int, str, bytes, bool]]:
            params = {"me": self.node_id, "limit": limit}
            rows = conn.execute(self.q.fetch_inbox, params).fetchall()
            return sorted((int(i), str(r), bytes(rec), bool(f)) for i, r, rec, f in rows)

        return cast(list[tuple[int, str, bytes, bool]], self._call("inbox read", run))

    def unclaim_inbox(self, event_ids: list[str]) -> None:
        """Put claimed rows back (their run is not adopted here yet: the next poll takes them)."""

        def run(conn: psycopg.Connection[Any]) -> None:
            conn.execute(self.q.unclaim_inbox, (event_ids, self.node_id))

        self._call("inbox claim", run)

    def find_response(self, run_id: str, request_event_id: str) -> tuple[Position, bytes] | None:
        """The ``webhook_responded`` record answering a request, once committed."""

        def run(conn: psycopg.Connection[Any]) -> tuple[Position, bytes] | None:
            for position, record in conn.execute(self.q.responses, (run_id,)):
                data = orjson.loads(record)[5]
                if data.get("request_event_id") == request_event_id:
                    return position, bytes(record)
            return None

        result: tuple[Position, bytes] | None = self._call("read", run)
        return result

    def start_key(self, key: str) -> str | None:
        """The run started with this idempotency key, if any."""

        def run(conn: psycopg.Connection[Any]) -> str | None:
            row = conn.execute(self.q.start_key, (key,)).fetchone()
            return None if row is None else str(row[0])

        result: str | None = self._call("read", run)
        return result

    def reserve_start_key(self, key: str, run_id: str, workflow: str) -> str:
        """Insert the run's row with ``key``, owned by this node, before its ``run_created``.

        Returns the run id that holds the key: ``run_id`` if this call won it.
        """

        def run(conn: psycopg.Connection[Any]) -> str:
            with conn.transaction():
                row = conn.execute(
                    self.q.reserve_start, (run_id, workflow, self.node_id, key)
                ).fetchone()
                if row is not None:
                    return run_id
                found = conn.execute(self.q.start_key, (key,)).fetchone()
                assert found is not None
                return str(found[0])

        result: str = self._call("start", run)
        return result

    # -- notifications -------------------------------------------------------------------------

    def listen(self, on_payload: Callable[[str], None], stop: threading.Event) -> None:
        """Call ``on_payload`` for each notification on the schema's channel until ``stop``.

        A lost connection is reopened after a pause; deliveries meanwhile wait for the poll.
        """
        while not stop.is_set():
            try:
                conn = _connect(self.dsn, self._where, autocommit=True)
            except StorageError as exc:
                logger.warning("LISTEN connection failed (polling meanwhile): %s", exc)
                stop.wait(1.0)
                continue
            try:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.q.channel)))
                while not stop.is_set():
                    for note in conn.notifies(timeout=0.25):
                        on_payload(note.payload)
            except psycopg.Error as exc:
                if not stop.is_set():
                    logger.warning("LISTEN connection lost (polling meanwhile): %s", exc)
                    stop.wait(1.0)
            finally:
                conn.close()


class _Full(Exception):
    """The run's inbox is at its bound (rolls the delivery back)."""


def _group(
    claimed: list[str], rows: list[tuple[Position, str, bytes]]
) -> list[tuple[str, list[tuple[Position, bytes]]]]:
    by_run: dict[str, list[tuple[Position, bytes]]] = {run_id: [] for run_id in claimed}
    for position, run_id, record in rows:
        by_run[run_id].append((position, bytes(record)))
    return list(by_run.items())


class _ClusterQueries:
    """The cluster's SQL, rendered once for its schema."""

    def __init__(self, schema: str) -> None:
        self.channel = channel_name(schema)

        def t(name: str) -> sql.Identifier:
            return sql.Identifier(schema, name)

        def render(template: str, **tables: str) -> bytes:
            return sql.SQL(template).format(**{k: t(v) for k, v in tables.items()}).as_bytes(None)

        live = "('pending', 'running')"
        self.register = render(
            "INSERT INTO {nodes} (node_id, lease_until) "
            "VALUES (%s, now() + make_interval(secs => %s))",
            nodes="nodes",
        )
        self.renew = render(
            "UPDATE {nodes} SET lease_until = now() + make_interval(secs => %s) "
            "WHERE node_id = %s AND NOT fenced RETURNING node_id",
            nodes="nodes",
        )
        self.fence_dead = render(
            "UPDATE {nodes} SET fenced = true WHERE lease_until < now() AND NOT fenced",
            nodes="nodes",
        )
        # Runs with a due timer first (timers due while every node was down fire at once).
        self.claim = render(
            "WITH orphan AS ("
            " SELECT r.run_id FROM {runs} r LEFT JOIN {nodes} n ON n.node_id = r.owner"
            f" WHERE r.status IN {live}"
            "  AND (r.owner IS NULL OR n.node_id IS NULL OR n.fenced OR n.lease_until < now())"
            # A versioned node takes only its version's runs (the run_created record's data,
            # the first event of every run, says which).
            "  AND (%s::text IS NULL"
            "   OR NOT EXISTS (SELECT 1 FROM {events} e WHERE e.run_id = r.run_id)"
            "   OR (SELECT convert_from(e.record, 'UTF8')::json -> 5 ->> 'version'"
            "       FROM {events} e WHERE e.run_id = r.run_id AND e.type = 'run_created'"
            "       ORDER BY e.position LIMIT 1) = %s::text)"
            " ORDER BY (SELECT min(due_at) FROM {timers} w WHERE w.run_id = r.run_id)"
            "  NULLS LAST"
            " LIMIT %s FOR UPDATE OF r SKIP LOCKED)"
            " UPDATE {runs} SET owner = %s FROM orphan WHERE {runs}.run_id = orphan.run_id"
            " RETURNING {runs}.run_id",
            runs="runs",
            nodes="nodes",
            timers="timers",
            events="events",
        )
        self.run_events = render(
            "SELECT position, run_id, record FROM {events} WHERE run_id = ANY(%s) "
            "ORDER BY position",
            events="events",
        )
        self.drop_phantoms = render(
            "DELETE FROM {runs} r WHERE r.run_id = ANY(%s) AND NOT EXISTS "
            "(SELECT 1 FROM {events} e WHERE e.run_id = r.run_id)",
            runs="runs",
            events="events",
        )
        self.run_owner = render("SELECT status, owner FROM {runs} WHERE run_id = %s", runs="runs")
        # Held until the commit of a cancel's inbox row, so a prune cannot delete the run under
        # it (the prune skips the run, or the cancel finds no run); appends are not held up.
        self.run_owner_held = render(
            "SELECT status, owner FROM {runs} WHERE run_id = %s FOR KEY SHARE", runs="runs"
        )
        self.release_runs = render(
            f"UPDATE {{runs}} SET owner = NULL WHERE owner = %s AND status IN {live}",
            runs="runs",
        )
        self.forget_node = render("DELETE FROM {nodes} WHERE node_id = %s", nodes="nodes")
        self.check_owner = render(
            "SELECT run_id FROM {runs} WHERE run_id = ANY(%s) AND owner = %s FOR SHARE",
            runs="runs",
        )
        # A row reserved by start_once gets its creation time and version here.
        self.insert_runs = render(
            "INSERT INTO {runs} (run_id, workflow, status, owner, created, version) "
            "SELECT r, w, 'pending', o, c, v FROM "
            "unnest(%s::text[], %s::text[], %s::float8[], %s::text[]) AS x(r, w, c, v), "
            "(SELECT %s::text AS o) AS node ON CONFLICT (run_id) DO UPDATE "
            "SET created = excluded.created, version = excluded.version",
            runs="runs",
        )
        # A run ends once: the first end recorded is the one retention counts from.
        self.set_status = render(
            "UPDATE {runs} SET status = x.s, started = coalesce(x.st, {runs}.started), "
            "ended = coalesce(x.en, {runs}.ended), ended_at = coalesce({runs}.ended_at, x.e) "
            "FROM unnest(%s::text[], %s::text[], %s::float8[], %s::float8[], %s::float8[]) "
            "AS x(r, s, st, en, e) "
            "WHERE {runs}.run_id = x.r",
            runs="runs",
        )
        # A chosen token was claimed first (claim_token): the same run fills in its event.
        self.add_hooks = render(
            "INSERT INTO {hooks} (token, run_id, hook_id, event_id) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) "
            "ON CONFLICT (token) DO UPDATE SET hook_id = excluded.hook_id, "
            "event_id = excluded.event_id WHERE {hooks}.run_id = excluded.run_id",
            hooks="hooks",
        )
        self.remove_hooks = render(
            "DELETE FROM {hooks} h USING unnest(%s::text[], %s::text[]) AS x(t, i) "
            "WHERE h.token = x.t AND h.hook_id = x.i",
            hooks="hooks",
        )
        self.add_timers = render(
            "INSERT INTO {timers} (wait_id, run_id, due_at) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::float8[]) "
            "ON CONFLICT (wait_id) DO NOTHING",
            timers="timers",
        )
        self.remove_timers = render("DELETE FROM {timers} WHERE wait_id = ANY(%s)", timers="timers")
        self.end_runs_hooks = render("DELETE FROM {hooks} WHERE run_id = ANY(%s)", hooks="hooks")
        self.end_runs_timers = render(
            "DELETE FROM {timers} WHERE run_id = ANY(%s)", timers="timers"
        )
        # The appender claimed the rows first (claim_inbox); their senders hear "took".
        self.take_inbox = render(
            "WITH gone AS (DELETE FROM {inbox} WHERE event_id = ANY(%s) AND taken_by = %s"
            " RETURNING event_id) SELECT pg_notify(%s, 'took:' || event_id) FROM gone",
            inbox="inbox",
        )
        self.claim_inbox = render(
            "UPDATE {inbox} SET taken_by = %s WHERE event_id = ANY(%s) AND taken_by IS NULL "
            "RETURNING event_id",
            inbox="inbox",
        )
        # Refused by the owner (the hook is gone), or given up by its sender: either way the
        # delivery never happened, so its idempotency key is free again.
        self.drop_inbox = render(
            "WITH gone AS (DELETE FROM {inbox} WHERE event_id = ANY(%(ids)s)"
            " AND (taken_by IS NULL OR taken_by = %(me)s) RETURNING event_id),"
            " freed AS (DELETE FROM {keys} WHERE event_id IN (SELECT event_id FROM gone))"
            " SELECT event_id, pg_notify(%(channel)s, %(reason)s || ':' || event_id) FROM gone",
            inbox="inbox",
            keys="delivery_keys",
        )
        self.cancel_inbox = render(
            "WITH gone AS (DELETE FROM {inbox} WHERE event_id = %s AND taken_by IS NULL"
            " RETURNING event_id),"
            " freed AS (DELETE FROM {keys} WHERE event_id IN (SELECT event_id FROM gone))"
            " SELECT count(*) FROM gone",
            inbox="inbox",
            keys="delivery_keys",
        )
        self.delivery_state = render(
            "SELECT EXISTS (SELECT 1 FROM {events} WHERE event_id = %s),"
            " EXISTS (SELECT 1 FROM {inbox} WHERE event_id = %s)",
            events="events",
            inbox="inbox",
        )
        self.release_inbox = render(
            "UPDATE {inbox} SET taken_by = NULL WHERE run_id = ANY(%s)", inbox="inbox"
        )
        self.notify = b"SELECT pg_notify(%s, %s)"
        self.notify_responses = b"SELECT pg_notify(%s, 'resp:' || x) FROM unnest(%s::text[]) x"
        self.notify_streams = b"SELECT pg_notify(%s, 'stream:' || x) FROM unnest(%s::text[]) x"
        self.claim_token = render(
            "INSERT INTO {hooks} (token, run_id, hook_id) VALUES (%s, %s, %s) "
            "ON CONFLICT (token) DO UPDATE SET hook_id = excluded.hook_id, event_id = NULL "
            "WHERE {hooks}.run_id = excluded.run_id RETURNING run_id",
            hooks="hooks",
        )
        self.token_holder = render("SELECT run_id FROM {hooks} WHERE token = %s", hooks="hooks")
        self.release_claim = render(
            "DELETE FROM {hooks} WHERE token = %s AND run_id = %s AND hook_id = %s "
            "AND event_id IS NULL",
            hooks="hooks",
        )
        self.lookup = render(
            "SELECT h.run_id, h.hook_id, r.owner, e.record, n.peer FROM {hooks} h "
            "JOIN {runs} r ON r.run_id = h.run_id "
            "LEFT JOIN {nodes} n ON n.node_id = r.owner "
            "LEFT JOIN {events} e ON e.event_id = h.event_id WHERE h.token = %s",
            hooks="hooks",
            runs="runs",
            nodes="nodes",
            events="events",
        )
        self.lock_hook = render(
            "SELECT r.owner FROM {hooks} h JOIN {runs} r ON r.run_id = h.run_id "
            f"WHERE h.token = %s AND h.hook_id = %s AND h.event_id IS NOT NULL "
            f"AND r.status IN {live} FOR SHARE OF h",
            hooks="hooks",
            runs="runs",
        )
        self.deliver_unkeyed = render(
            "WITH live AS ("
            " SELECT r.owner FROM {hooks} h JOIN {runs} r ON r.run_id = h.run_id"
            " WHERE h.token = %(token)s AND h.hook_id = %(hook)s AND h.event_id IS NOT NULL"
            f" AND r.status IN {live} FOR SHARE OF h),"
            " added AS ("
            " INSERT INTO {inbox} (run_id, token, event_id, record, forwarded)"
            " SELECT %(run)s, %(token)s, %(event)s, %(record)s, %(forwarded)s FROM live"
            " WHERE (SELECT count(*) FROM {inbox} WHERE run_id = %(run)s) < %(bound)s"
            " RETURNING 1)"
            " SELECT (SELECT owner FROM live), EXISTS (SELECT 1 FROM live),"
            " EXISTS (SELECT 1 FROM added),"
            " (SELECT pg_notify(%(channel)s, 'wake:' || owner) FROM live"
            "  WHERE owner <> %(me)s AND EXISTS (SELECT 1 FROM added))",
            hooks="hooks",
            runs="runs",
            inbox="inbox",
        )
        self.add_key = render(
            "INSERT INTO {keys} (token, key, hook_id, digest, event_id) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
            keys="delivery_keys",
        )
        self.find_key = render(
            "SELECT hook_id, digest, event_id FROM {keys} WHERE token = %s AND key = %s",
            keys="delivery_keys",
        )
        self.find_delivery = render(
            "SELECT k.digest, k.event_id, c.record FROM {keys} k"
            " JOIN {events} d ON d.event_id = k.event_id"
            " JOIN {events} c ON c.run_id = d.run_id AND c.type = 'hook_created'"
            "  AND c.correlation_id = k.hook_id"
            " WHERE k.token = %s AND k.key = %s",
            keys="delivery_keys",
            events="events",
        )
        # An upsert, not an update: a prune may delete the old key (its run expired) between
        # finding it and reusing it, and the delivery must still record its key.
        self.reuse_key = render(
            "INSERT INTO {keys} (hook_id, digest, event_id, token, key) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (token, key) DO UPDATE SET "
            "hook_id = excluded.hook_id, digest = excluded.digest, event_id = excluded.event_id",
            keys="delivery_keys",
        )
        self.inbox_count = render("SELECT count(*) FROM {inbox} WHERE run_id = %s", inbox="inbox")
        self.add_inbox = render(
            "INSERT INTO {inbox} (run_id, token, event_id, record) VALUES (%s, %s, %s, %s)",
            inbox="inbox",
        )
        self.fetch_inbox = render(
            "UPDATE {inbox} SET taken_by = %(me)s WHERE id IN ("
            " SELECT i.id FROM {inbox} i JOIN {runs} r ON r.run_id = i.run_id"
            " WHERE r.owner = %(me)s AND i.taken_by IS NULL ORDER BY i.id LIMIT %(limit)s"
            " FOR UPDATE OF i SKIP LOCKED)"
            " RETURNING id, run_id, record, forwarded",
            inbox="inbox",
            runs="runs",
        )
        self.unclaim_inbox = render(
            "UPDATE {inbox} SET taken_by = NULL WHERE event_id = ANY(%s) AND taken_by = %s",
            inbox="inbox",
        )
        self.responses = render(
            "SELECT position, record FROM {events} "
            "WHERE run_id = %s AND type = 'webhook_responded'",
            events="events",
        )
        self.start_key = render("SELECT run_id FROM {runs} WHERE start_key = %s", runs="runs")
        self.reserve_start = render(
            "INSERT INTO {runs} (run_id, workflow, status, owner, start_key) "
            "VALUES (%s, %s, 'pending', %s, %s) ON CONFLICT DO NOTHING RETURNING run_id",
            runs="runs",
        )
