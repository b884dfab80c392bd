"""``Runtime``: builds the parts, opens the log, recovers, supervises, and shuts down in order.

The parts, each with one job (see the README's "How it works"):

- ``Journal`` records events and says when they are durable; everything writes through it.
- ``Ownership`` says which process owns a run and how to reach it: ``LocalOwnership`` for one
  process, ``cluster.SharedOwnership`` for several on one PostgreSQL schema. Chosen here, once.
- ``Supervisor`` runs the actors; ``StepExecutor`` the steps; ``TimerService`` the timers.
- ``Front`` is the outside API (``start``, ``resume_hook``, ...), which ``Runtime`` exposes.

Start-up: scan the log (a torn tail is truncated and reported), fold every event into the state,
arm the timers, restart the steps that were running, and wake every unfinished run. Shutdown, in
reverse: stop the dispatcher, timers and steps, then let the writer drain what was submitted,
then close the store.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from contextvars import Token
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import anyio
import anyio.abc
import anyio.to_thread

from ..errors import LeaseLostError, WorkflowDefinitionError
from . import current as current_api
from .actor import ActorServices
from .backend import (
    POSTGRES_SCHEMES,
    StoreConfig,
    describe,
    open_store,
    share_ownership,
    shared_log,
)
from .catalog import Catalog, MemoryCatalog, shared_catalog
from .clock import Clock
from .crypto import KeyRing
from .durations import parse_duration
from .failure import Failure
from .front import Front
from .ids import new_token
from .inspection import Inspection
from .journal import Journal, LogHealth
from .limits import Identity, Limits
from .log.store import Durability, EventStore
from .mailbox import Admission
from .metrics import RuntimeMetrics
from .outside_api import OutsideAPI
from .ownership import LocalOwnership, Ownership
from .parking import (
    RetryReport,
    check_divergence_mode,
    log_missing_workflow,
    parked_runs,
    runs_here,
)
from .payloads import Payloads
from .reclaim import reclaim_for
from .recovery import recover
from .registry import Registry
from .response_waiters import WebhookResponses
from .retention import Retention
from .scope_probe import cancel_scope_probe
from .state import RunState, State
from .steps import StepExecutor
from .streams import Streams
from .supervisor import Supervisor
from .timers import TimerService
from .webhooks import Webhooks
from .workflow import WorkflowFunction

__all__ = ["Runtime", "current_runtime"]

logger = logging.getLogger("actorflow.runtime")


def _retention_seconds(value: float | timedelta | str | None) -> float:
    """``None`` keeps finished runs for ever; otherwise a duration such as ``"7d"``."""
    if value is None:
        return math.inf
    seconds = parse_duration(value)
    if seconds <= 0:
        raise WorkflowDefinitionError(f"retention must be positive, not {value!r}")
    return seconds


def current_runtime() -> Runtime:
    """The runtime that ``actorflow.api`` functions act on.

    Raises:
        WorkflowError: no runtime is open.
    """
    return cast(Runtime, current_api.current())


class Runtime(OutsideAPI, Inspection):
    """The durable workflow runtime, embedded: ``async with Runtime(...) as rt``.

    ``durability="none"`` skips fsync: for tests and benchmarks only (it is logged as such).

    Besides the outside API, a runtime shows its parts for tools and tests: ``state`` (the fold
    of the log), ``journal``, ``supervisor``, ``store`` and ``payloads``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = ".actorflow",
        workflows: Iterable[WorkflowFunction[..., Any]] = (),
        *,
        store: EventStore | str | None = None,
        durability: Durability = "fsync",
        encryption_key: str | bytes | Sequence[str | bytes] | None = None,
        secrets: Mapping[str, str | bytes] | None = None,
        base_url: str | None = None,
        mailbox_size: int = 1024,
        max_backlog: int = 200_000,
        max_payload_bytes: int = 4 * 1024 * 1024,
        max_hooks_per_run: int = 10_000,
        max_calls_per_run: int = 1_000_000,
        max_concurrent_steps: int = 64,
        passivate_after: float = 300.0,
        max_resident: int = 100_000,
        restart_budget: int = 3,
        restart_window: float = 5.0,
        owner_id: str = "local",
        project_id: str = "default",
        environment: str = "development",
        migrate: bool = True,
        schema: str = "actorflow",
        lease_seconds: float = 10.0,
        poll_interval: float = 1.0,
        node_id: str | None = None,
        peer_host: str | None = "127.0.0.1",
        peer_port: int = 0,
        on_divergence: str = "park",
        version: str | None = None,
        retention: float | timedelta | str | None = "7d",
    ) -> None:
        if durability not in ("fsync", "none"):
            raise WorkflowDefinitionError(
                f'durability must be "fsync" or "none", not {durability!r}'
            )
        if isinstance(store, str) and not store.startswith(POSTGRES_SCHEMES):
            raise WorkflowDefinitionError(
                f"store must be an EventStore or a postgresql:// URL, not {store!r}"
            )
        self.data_dir = Path(data_dir)
        self.durability: Durability = durability
        self.workflows = Registry(workflows)
        self._store_arg = store
        self._migrate = migrate
        self.schema = schema
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        # Where a node of a shared schema listens for the others' forwarded deliveries.
        self.peer_bind = None if peer_host is None else (peer_host, peer_port)
        self.node_id = node_id or f"{socket.gethostname()}-{os.getpid()}-{new_token()[:8]}"
        self.payloads = Payloads(KeyRing.from_config(encryption_key))
        self.secrets: Mapping[str, str | bytes] = dict(secrets or {})
        self.limits = Limits(
            mailbox_size=mailbox_size,
            max_backlog=max_backlog,
            max_payload_bytes=max_payload_bytes,
            max_hooks_per_run=max_hooks_per_run,
            max_calls_per_run=max_calls_per_run,
        )
        self.identity = Identity(owner_id, project_id, environment,
                                 base_url.rstrip("/") if base_url else None, version)  # fmt: skip
        self.clock = Clock()
        self.state = State()
        self.journal = Journal(self.state, self.clock, self.limits)
        self.admission = Admission(self.limits)
        self.responses = WebhookResponses()
        self.journal.on_responded = self.responses.responded
        self.steps = StepExecutor(
            self.journal, self.state, self.payloads, self.identity, max_concurrent_steps
        )
        self.timers = TimerService(self.journal, self.state)
        self.streams = Streams(self.state, self.journal, self.payloads, self.limits, self._read)
        self.steps.streams = self.streams
        self._local = LocalOwnership(self.state, self.journal, self.admission, poll_interval)
        self.ownership: Ownership = self._local
        self._services = ActorServices(
            journal=self.journal,
            state=self.state,
            registry=self.workflows,
            ownership=self._local,
            admission=self.admission,
            steps=self.steps,
            timers=self.timers,
            limits=self.limits,
            identity=self.identity,
            on_missing_workflow=log_missing_workflow,
            on_divergence=check_divergence_mode(on_divergence),
            streams=self.streams,
        )
        self.supervisor = Supervisor(
            self._services,
            read=self._read,
            decode=self.payloads.decode,
            passivate_after=passivate_after,
            max_resident=max_resident,
            restart_budget=restart_budget,
            restart_window=restart_window,
        )
        self.retention = Retention(_retention_seconds(retention), self.state, self.clock)
        self.journal.on_run_ended = self._run_ended
        self.front = self._make_front()
        self.metrics = RuntimeMetrics(self.state, self.journal, self.supervisor.mailbox_backlog,
                                      lambda: self.ownership.routing_counts())  # fmt: skip
        self.catalog: Catalog = MemoryCatalog(self.state, self._read, self.payloads)
        self.store: EventStore
        self.torn_tail: str | None = None
        self._failure = Failure(lambda exc: self.journal.writer.stop_accepting(exc))
        self._outer: anyio.abc.TaskGroup | None = None
        self._inner_scope: anyio.CancelScope | None = None
        self._services_done: anyio.Event | None = None
        self._writer_done: anyio.Event | None = None
        self._ctx_token: Token[Any] | None = None

    def _make_front(self) -> Front:
        webhooks = Webhooks(self.state, self.journal, self.ownership, self.payloads, self.limits,
                            self.responses, self.resolve_secret)  # fmt: skip
        return Front(state=self.state, journal=self.journal, ownership=self.ownership,
                     payloads=self.payloads, registry=self.workflows, limits=self.limits,
                     identity=self.identity, webhooks=webhooks, clock=self.clock,
                     streams=self.streams, retention=self.retention.seconds)  # fmt: skip

    # -- configuration -----------------------------------------------------------------------

    def register(self, wf: WorkflowFunction[..., Any]) -> None:
        """Make a workflow startable (and recoverable) by this runtime.

        Raises:
            WorkflowDefinitionError: not a workflow, or another workflow has the same name.
        """
        self.workflows.register(wf)

    @property
    def base_url(self) -> str | None:
        """The public base URL webhooks are reached at (``None``: webhooks have no URL)."""
        return self.identity.base_url

    @base_url.setter
    def base_url(self, value: str | None) -> None:
        self.identity.base_url = value.rstrip("/") if value else None

    @property
    def healthy(self) -> bool:
        return self.journal.healthy

    def health(self) -> LogHealth:
        """The log's health: started, failed (and why), events waiting for disk."""
        return self.journal.health()

    # -- start and stop ----------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        self.clock.start()
        self._services.scope_probe = cancel_scope_probe()
        if self.durability == "none":
            logger.warning("actorflow durability='none': events are NOT fsynced (tests/benchmarks)")
        self.store = self._open_store()
        self._choose_ownership()
        try:
            self.torn_tail = await anyio.to_thread.run_sync(
                recover, self.store, self.state, self.payloads
            )
        except BaseException:
            # A refused start must not keep the directory locked for the next attempt.
            await anyio.to_thread.run_sync(self.store.close)
            self.ownership.close()
            raise
        self.retention.reclaim = reclaim_for(self.store, self.state, self.supervisor.reads)
        self.retention.expire()  # runs that ended long ago leave before anything wakes
        self.journal.open(self.store, self.payloads.encode, self.supervisor, self._on_log_failure)
        self._outer = anyio.create_task_group()
        await self._outer.__aenter__()
        try:
            self._writer_done = anyio.Event()
            self._services_done = anyio.Event()
            await self._outer.start(self._run_writer)
            await self._outer.start(self._run_services)
        except BaseException:
            await self._outer.__aexit__(None, None, None)
            raise
        self._ctx_token = current_api.enter(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        current_api.leave(self, self._ctx_token)
        assert self._outer is not None
        try:
            with anyio.CancelScope(shield=True):
                if self._inner_scope is not None:
                    self._inner_scope.cancel()
                if self._services_done is not None:
                    await self._services_done.wait()
                # Close resident machines now, emitting nothing: left to the garbage collector,
                # a workflow's `with hook:` would try to log a dispose with no loop running.
                for run in self.state.runs.values():
                    if run.actor is not None:
                        run.actor.drop()
                self.journal.writer.close()
                if self._writer_done is not None:
                    await self._writer_done.wait()
        finally:
            # Every task has stopped by now. The body's own exception is not handed to the task
            # group: it would come back wrapped in an ExceptionGroup, and callers could no longer
            # `except HookNotFoundError` around their `async with Runtime(...)`.
            try:
                await self._outer.__aexit__(None, None, None)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._close_store)
                self.ownership.close()
                self.catalog.close()
        return None

    async def _run_writer(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        assert self._writer_done is not None
        try:
            await self.journal.writer.run(task_status=task_status)
        finally:
            self._writer_done.set()

    async def _run_services(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        assert self._services_done is not None
        try:
            with anyio.CancelScope() as scope:
                self._inner_scope = scope
                async with anyio.create_task_group() as tg:
                    await tg.start(self.steps.run)
                    await tg.start(self.timers.run)
                    await tg.start(self.supervisor.run)
                    await tg.start(self.ownership.run)
                    await tg.start(self.retention.run)
                    for run in self.state.runs.values():
                        if not run.finished:
                            self._arm(run)
                    task_status.started()
        finally:
            self._services_done.set()

    def _run_ended(self, step_ids: list[str]) -> None:
        self.steps.cancel(step_ids)
        self.retention.noticed_end()

    def _arm(self, run: RunState) -> None:
        """Start an unfinished run's timers and steps and wake it (recovery, takeover)."""
        if not runs_here(self.identity.version, run):
            return  # another version's run: its timers and steps wait for their own runtime
        state = self.state
        for pending_id in list(run.pending or ()):
            timer = state.timers.get(pending_id)
            if timer is not None:
                self.timers.add(timer.wait_id, timer.resume_at)
            elif pending_id in state.steps:
                self.steps.start(pending_id)
        self.supervisor.wake(run)

    def _close_store(self) -> None:
        self.retention.close()
        self.store.close()

    def _open_store(self) -> EventStore:
        return open_store(self._store_config())

    def _store_config(self) -> StoreConfig:
        return StoreConfig(self._store_arg, self.data_dir, self.durability, self.node_id,
                           self.schema, self._migrate, self.lease_seconds,
                           self.identity.version)  # fmt: skip

    def _choose_ownership(self) -> None:
        """Share run ownership over a shared PostgreSQL log; otherwise every run is ours."""
        shared = share_ownership(self.store, self._local, payloads=self.payloads,
                                 responses=self.responses, adopt_run=self._arm, fail=self.fail,
                                 failure=lambda: self.failure, poll_interval=self.poll_interval,
                                 version=self.identity.version,
                                 peer_bind=self.peer_bind)  # fmt: skip
        if shared is None:
            return
        self.node_id = shared_log(self.store).node_id
        self.ownership = self._services.ownership = shared
        self.front = self._make_front()
        self.catalog = shared_catalog(self.store, self.state, self.payloads) or self.catalog

    def describe_store(self) -> str:
        """Where the log is, for messages (never a password)."""
        return describe(getattr(self, "store", None), self._store_config())

    def _read(self, positions: list[int]) -> Sequence[bytes]:
        return self.store.read(positions)

    # -- failure -----------------------------------------------------------------------------

    @property
    def failure(self) -> BaseException | None:
        """Why this runtime can no longer work, once it cannot (see ``fail``)."""
        return self._failure.cause

    def fail(self, exc: BaseException) -> None:
        """This runtime can no longer work (it lost its lease): refuse every write from now on.

        ``wait_failed`` returns, so a server shuts down; a restart recovers from the log.
        """
        self._failure.fail(exc)

    async def wait_failed(self) -> BaseException:
        """Return (the cause) once the runtime has failed for good; for supervisors."""
        return await self._failure.wait()

    def _on_log_failure(self, exc: BaseException) -> None:
        # Alone, a runtime whose log failed keeps answering (HTTP 503); ownership says whether
        # it must stop instead (a node that cannot write lets other nodes take its runs).
        if isinstance(exc, LeaseLostError) or self.ownership.stops_on_log_failure(exc):
            self.fail(exc)

    def resolve_secret(self, name: str) -> bytes:
        """The secret named ``name`` (``secrets=`` first, then ``ACTORFLOW_SECRET_<NAME>``).

        Raises:
            WorkflowDefinitionError: the secret is not configured.
        """
        from ..verify import resolve_secret

        return resolve_secret(name, self.secrets)

    # -- the outside API (more in outside_api.py) ---------------------------------------------

    async def retry_parked(self) -> RetryReport:
        """Replay this runtime's parked runs with its code now (see ``parking.py``).

        Returns which runs go on again and which are still parked."""
        retried = parked_runs(self.state, self.identity.version)
        return RetryReport.of(retried, await self.supervisor.retry(retried))

    async def wait_idle(self, timeout: float = math.inf) -> None:
        """Wait until the log has written everything submitted (for tests and shutdown)."""
        with anyio.fail_after(timeout):
            await self.journal.flush()
