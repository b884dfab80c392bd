"""``Runtime``: opens the log, recovers, supervises, and serves the outside API.

Start-up: scan the log (a torn tail is truncated and reported), fold every event into the state,
arm the timers, restart the steps that were running, and wake every unfinished run. Shutdown, in
reverse: stop the dispatcher, timers and steps, then let the writer drain what was submitted,
then close the store.

A resume travels one way: ``resume_hook`` -> log writer (fsync) -> mailbox -> actor -> machine ->
commands -> log writer.
"""

from __future__ import annotations

import gc
import inspect
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar, Token
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeGuard

import anyio
import anyio.abc
import anyio.to_thread
import orjson

from ..errors import (
    HookNotFoundError,
    IdempotencyKeyConflictError,
    LeaseLostError,
    OverloadedError,
    PayloadTooLargeError,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowRunNotFoundError,
)
from . import codec
from .core import events as ev
from .core.events import Event
from .core.ops import HookHandle
from .crypto import KeyRing
from .ids import new_id, new_token
from .log.file_log import FileLog
from .log.store import Durability, EventStore
from .log.writer import LogWriter
from .payloads import Payloads
from .records import SPEC_VERSION, Hook, Run, hook_created_at
from .scope_probe import cancel_scope_probe
from .state import HookEntry, State
from .steps import StepExecutor
from .supervisor import Supervisor
from .timers import TimerService
from .typed_hooks import load_schema, validate_payload
from .webhook_request import Request, Response
from .webhooks import WebhookResponses, resume_webhook
from .workflow import WorkflowFunction

if TYPE_CHECKING:
    from .cluster import Cluster
    from .log.postgres_cluster import ClusterLog

__all__ = ["Runtime", "current_runtime"]

logger = logging.getLogger("actorflow.runtime")

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")

_current: ContextVar[Runtime | None] = ContextVar("actorflow_runtime", default=None)
_open: list[Runtime] = []

_DELIVERED = frozenset(
    {ev.RUN_CREATED, ev.HOOK_RECEIVED, ev.STEP_COMPLETED, ev.STEP_FAILED, ev.WAIT_COMPLETED,
     ev.RUN_CANCELLED}
)  # fmt: skip


def _is_cluster_store(store: EventStore) -> TypeGuard[ClusterLog]:
    # Checked by attribute, not isinstance: the PostgreSQL modules need psycopg, an extra.
    return hasattr(store, "node_id") and hasattr(store, "lease_seconds")


def current_runtime() -> Runtime:
    """The runtime that ``actorflow.api`` functions act on.

    Raises:
        WorkflowError: no runtime is open.
    """
    rt = _current.get()
    if rt is None and _open:
        rt = _open[-1]
    if rt is None:
        raise WorkflowError(
            "no actorflow Runtime is running; call this inside `async with af.Runtime(...)`"
        )
    return rt


class Runtime:
    """The durable workflow runtime, embedded: ``async with Runtime(...) as rt``.

    ``durability="none"`` skips fsync: for tests and benchmarks only (it is logged as such).
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
    ) -> None:
        if durability not in ("fsync", "none"):
            raise WorkflowDefinitionError(
                f'durability must be "fsync" or "none", not {durability!r}'
            )
        self.data_dir = Path(data_dir)
        self.durability: Durability = durability
        self.workflows: dict[str, WorkflowFunction[..., Any]] = {}
        for wf in workflows:
            self.register(wf)
        if isinstance(store, str) and not store.startswith(_POSTGRES_SCHEMES):
            raise WorkflowDefinitionError(
                f"store must be an EventStore or a postgresql:// URL, not {store!r}"
            )
        self._store_arg = store
        self._migrate = migrate
        self.schema = schema
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.node_id = node_id or f"{socket.gethostname()}-{os.getpid()}-{new_token()[:8]}"
        #: This runtime's part in a PostgreSQL schema shared by several runtimes, if it has one.
        self.cluster: Cluster | None = None
        self.payloads = Payloads(KeyRing.from_config(encryption_key))
        self.secrets: Mapping[str, str | bytes] = dict(secrets or {})
        self.base_url = base_url.rstrip("/") if base_url else None
        self.mailbox_size = mailbox_size
        self.max_backlog = max_backlog
        self.max_payload_bytes = max_payload_bytes
        self.max_hooks_per_run = max_hooks_per_run
        self.max_calls_per_run = max_calls_per_run
        self.owner_id = owner_id
        self.project_id = project_id
        self.environment = environment
        self.state = State()
        self.steps = StepExecutor(self, max_concurrent_steps)
        self.timers = TimerService(self)
        self.supervisor = Supervisor(
            self,
            passivate_after=passivate_after,
            max_resident=max_resident,
            restart_budget=restart_budget,
            restart_window=restart_window,
        )
        self._mono0 = 0.0
        self._wall0 = 0.0
        self._outer: anyio.abc.TaskGroup | None = None
        self._inner_scope: anyio.CancelScope | None = None
        self._services_done: anyio.Event | None = None
        self._writer_done: anyio.Event | None = None
        self._ctx_token: Token[Runtime | None] | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self.store: EventStore
        self.writer: LogWriter
        self.torn_tail: str | None = None
        self.scope_probe: Callable[[], object] | None = None
        self.webhook_responses = WebhookResponses()
        #: Why this runtime can no longer work, once it cannot (see ``fail``).
        self.failure: BaseException | None = None
        self._failed: anyio.Event | None = None

    # -- configuration -----------------------------------------------------------------------

    def register(self, wf: WorkflowFunction[..., Any]) -> None:
        """Make a workflow startable (and recoverable) by this runtime.

        Raises:
            WorkflowDefinitionError: not a workflow, or another workflow has the same name.
        """
        if not isinstance(wf, WorkflowFunction):
            raise WorkflowDefinitionError(f"{wf!r} is not decorated with @af.workflow")
        other = self.workflows.get(wf.name)
        if other is not None and other is not wf:
            raise WorkflowDefinitionError(
                f"two workflows are named {wf.name!r}; give one @af.workflow(name=...)"
            )
        self.workflows[wf.name] = wf

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        assert self._task_group is not None, "the runtime is not running"
        return self._task_group

    def clock(self) -> float:
        """Wall-clock seconds, advancing with the event loop's clock (virtual in tests)."""
        return self._wall0 + (anyio.current_time() - self._mono0)

    @property
    def healthy(self) -> bool:
        return self.writer.healthy

    # -- start and stop ----------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        self._mono0 = anyio.current_time()
        self._wall0 = time.time()
        self.scope_probe = cancel_scope_probe()
        if self.durability == "none":
            logger.warning("actorflow durability='none': events are NOT fsynced (tests/benchmarks)")
        self.store = self._open_store()
        if _is_cluster_store(self.store):
            from .cluster import Cluster

            self.node_id = self.store.node_id
            self.cluster = Cluster(self, self.store, poll_interval=self.poll_interval)
        try:
            await anyio.to_thread.run_sync(self._recover_without_gc)
        except BaseException:
            # A refused start must not keep the directory locked for the next attempt.
            await anyio.to_thread.run_sync(self.store.close)
            raise
        self.writer = LogWriter(
            self.store, self.payloads.encode, self._on_durable, on_failure=self._on_log_failure
        )
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
        self._ctx_token = _current.set(self)
        _open.append(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self in _open:
            _open.remove(self)
        if self._ctx_token is not None:
            try:
                _current.reset(self._ctx_token)
            except ValueError:  # exited from another context: nothing to restore there
                _current.set(None)
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
                self.writer.close()
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
                    await anyio.to_thread.run_sync(self.store.close)
                if self.cluster is not None:
                    self.cluster.close()
        return None

    async def _run_writer(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        assert self._writer_done is not None
        try:
            await self.writer.run(task_status=task_status)
        finally:
            self._writer_done.set()

    async def _run_services(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        assert self._services_done is not None
        try:
            with anyio.CancelScope() as scope:
                self._inner_scope = scope
                async with anyio.create_task_group() as tg:
                    self._task_group = tg
                    await tg.start(self.supervisor.dispatch)
                    await tg.start(self.timers.run)
                    await tg.start(self.supervisor.reap)
                    for _ in range(4):
                        await tg.start(self.supervisor.rebuild_worker)
                    if self.cluster is not None:
                        await tg.start(self.cluster.run)
                    self._resume_after_recovery()
                    task_status.started()
        finally:
            self._task_group = None
            self._services_done.set()

    def _open_store(self) -> EventStore:
        """The store to open: the one given, PostgreSQL for a URL, else the file log.

        Raises:
            WorkflowDefinitionError: a URL was given but psycopg is not installed.
        """
        store = self._store_arg
        if store is None:
            return FileLog(self.data_dir / "log", durability=self.durability)
        if isinstance(store, str):
            try:
                from .log.postgres_cluster import ClusterLog
            except ImportError as exc:
                raise WorkflowDefinitionError(
                    "store='postgresql://...' needs psycopg: pip install 'actorflow[postgres]'"
                ) from exc
            return ClusterLog(
                store,
                node_id=self.node_id,
                durability=self.durability,
                schema=self.schema,
                migrate=self._migrate,
                lease_seconds=self.lease_seconds,
            )
        return store

    def describe_store(self) -> str:
        """Where the log is, for messages (never a password)."""
        if self.cluster is not None:
            store = self.cluster.store
            return f"PostgreSQL {store._where}, node {self.node_id}"
        if isinstance(self._store_arg, str) or self._store_arg is not None:
            return f"store {type(self._store_arg).__name__}"
        return f"data dir {self.data_dir}"

    def _recover_without_gc(self) -> None:
        # Recovery creates objects that all stay alive; letting the collector walk them again
        # and again while they are being made cost a third of the time to open a large log.
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._recover()
        finally:
            if enabled:
                gc.enable()

    def _recover(self) -> None:
        state = self.state
        runs = state.runs
        decode = self.payloads.decode_plain
        key_ids: dict[str, tuple[Event, str]] = {}
        user_keys = ev.USER_VALUE_KEYS
        is_envelope = KeyRing.is_envelope
        for position, record in self.store.scan():
            event = decode(record, position)
            state.apply(event)
            run = runs.get(event.run_id)
            if run is not None:
                run.positions.append(position)
                run.submitted += 1
            if b'{"$enc":' not in record:  # most logs: no envelope, no per-key work
                continue
            for name in user_keys.intersection(event.data):
                stored = event.data[name]
                if is_envelope(stored):
                    key_ids.setdefault(str(stored["$enc"]).split(".", 2)[1], (event, name))
        self._check_keys(key_ids)
        # What recovery built lives as long as the runtime: keep the collector from walking it
        # again on every collection (it cost starts/s in proportion to the live runs).
        gc.freeze()
        report = self.store.last_scan
        if report is not None and report.torn_tail_path is not None:
            self.torn_tail = (
                f"{report.torn_tail_path} at offset {report.torn_tail_offset} "
                f"({report.torn_tail_bytes} bytes)"
            )

    def _check_keys(self, key_ids: dict[str, tuple[Event, str]]) -> None:
        """Refuse to start when the log holds values no configured key can read.

        Raises:
            DecryptionError: a key the log uses is not configured, or it is the wrong key.
        """
        for event, name in key_ids.values():
            # One real decryption per key id: a missing or wrong key fails here, at start,
            # instead of as garbage (or a crash) in some run later.
            self.payloads.value(event, event.data[name])

    def _resume_after_recovery(self) -> None:

        for timer in list(self.state.timers.values()):
            self.timers.add(timer.wait_id, timer.resume_at)
        for step_id in list(self.state.steps):
            self.steps.start(step_id)
        for run in self.state.runs.values():
            if not run.finished:
                self.supervisor.wake(run)

    # -- the log -----------------------------------------------------------------------------

    def append(
        self, event: Event, key: bytes | str | None = None, *, record: bytes | None = None
    ) -> Any:
        """Submit ``event`` to the log and fold it into the state. Returns its ``Ticket``.

        ``record``: the event already encoded (an inbox record another node made).

        Raises:
            LogWriteError: the log has failed.
            SerializationError: the event cannot be encoded (nothing committed).
        """
        ticket = self.writer.submit(event, key, record=record)
        run = self.state.runs.get(event.run_id)
        if event.type in ev.TERMINAL_EVENTS and run is not None and not run.finished:
            pending = list(run.pending or ())
            self.state.apply(event)
            self.steps.cancel(pending)
        else:
            self.state.apply(event)
        if run is None:
            run = self.state.runs.get(event.run_id)
        if run is not None:
            run.submitted += 1
        return ticket

    def fail(self, exc: BaseException) -> None:
        """This runtime can no longer work (it lost its lease): refuse every write from now on.

        ``wait_failed`` returns, so a server shuts down; a restart recovers from the log.
        """
        if self.failure is None:
            self.failure = exc
            logger.critical("actorflow runtime stopped working: %s", exc)
            if self._failed is not None:
                self._failed.set()
        self.writer.stop_accepting(exc)

    async def wait_failed(self) -> BaseException:
        """Return (the cause) once the runtime has failed for good; for supervisors."""
        if self.failure is None:
            if self._failed is None:
                self._failed = anyio.Event()
            await self._failed.wait()
        assert self.failure is not None
        return self.failure

    def _on_log_failure(self, exc: BaseException) -> None:
        # On a shared store, a node that cannot write must also stop renewing its lease, so
        # that other nodes take its runs over; alone, it keeps answering (HTTP 503) instead.
        if isinstance(exc, LeaseLostError) or self.cluster is not None:
            self.fail(exc)

    def _on_durable(self, events: Sequence[Event]) -> None:
        runs = self.state.runs
        deliver = self.supervisor.deliver
        for event in events:
            run = runs.get(event.run_id)
            if run is None:
                continue
            run.positions.append(event.position)
            kind = event.type
            if kind in _DELIVERED:
                deliver(run, event)
            if kind in ev.TERMINAL_EVENTS and run.done is not None:
                run.done.set()
            if kind == ev.WEBHOOK_RESPONDED:
                self.on_webhook_responded(event)

    def on_webhook_responded(self, event: Event) -> None:
        self.webhook_responses.responded(event)

    def resolve_secret(self, name: str) -> bytes:
        """The secret named ``name`` (``secrets=`` first, then ``ACTORFLOW_SECRET_<NAME>``).

        Raises:
            WorkflowDefinitionError: the secret is not configured.
        """
        from ..verify import resolve_secret

        return resolve_secret(name, self.secrets)

    def log_missing_workflow(self, run: Any) -> None:
        logger.error(
            "run %s uses workflow %r, which this runtime does not have; it waits until a "
            "runtime with that workflow registered starts",
            run.run_id, run.workflow_name,
        )  # fmt: skip

    def decode_value(self, event: Event, key: str) -> Any:
        """A user value of an event, decrypted and decoded."""
        return codec.from_tree(self.payloads.value(event, event.data.get(key)))

    def decode_error(self, event: Event) -> BaseException:
        return codec.error_from_tree(self.payloads.value(event, event.data.get("error")))

    def check_size(self, what: str, tree: Any) -> None:
        """Refuse a user value over ``max_payload_bytes`` (before anything is written).

        Raises:
            PayloadTooLargeError: it is larger.
        """
        size = len(orjson.dumps(tree))
        if size > self.max_payload_bytes:
            raise PayloadTooLargeError(what, size, self.max_payload_bytes)

    def _admit(self) -> None:
        self.writer.check()
        if self.writer.backlog >= self.max_backlog:
            raise OverloadedError(
                f"the event log has {self.writer.backlog} events waiting for disk; retry shortly",
                retry_after=1.0,
            )

    # -- the outside API ---------------------------------------------------------------------

    async def start(
        self, workflow: WorkflowFunction[..., Any] | str, *args: Any, **kwargs: Any
    ) -> Run:
        """Start a run: durably records ``run_created`` and returns before the run finishes.

        Raises:
            WorkflowDefinitionError: an unknown workflow name, not a workflow, or arguments
                that do not fit its signature (nothing committed).
            SerializationError: the arguments cannot be stored (nothing committed).
            OverloadedError: the log backlog is full; retry later.
            LogWriteError: the log failed.
        """
        return await self._start(None, workflow, args, kwargs)

    async def start_once(
        self,
        idempotency_key: str,
        workflow: WorkflowFunction[..., Any] | str,
        *args: Any,
        **kwargs: Any,
    ) -> Run:
        """Start a run unless one was started with ``idempotency_key``: then return that run.

        For callers that retry a start whose answer they did not get (``POST .../runs`` with
        an ``Idempotency-Key`` header): the retry returns the first run instead of a second.

        Raises:
            The errors of ``start``.
        """
        if not isinstance(idempotency_key, str) or not idempotency_key:
            raise WorkflowDefinitionError("idempotency_key must be a non-empty string")
        return await self._start(idempotency_key, workflow, args, kwargs)

    async def _start(
        self,
        key: str | None,
        workflow: WorkflowFunction[..., Any] | str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Run:
        if key is not None:
            prior = self.state.start_keys.get(key)
            if prior is None and self.cluster is not None:
                prior = await self.cluster.start_key(key)
            if prior is not None:
                await self.writer.flush()  # the first start may still be on its way to disk
                return Run(self, prior)
        if isinstance(workflow, str):
            found = self.workflows.get(workflow)
            if found is None:
                raise WorkflowDefinitionError(
                    f"no workflow named {workflow!r} is registered; known: "
                    f"{', '.join(sorted(self.workflows)) or 'none'}"
                )
            workflow = found
        self.register(workflow)
        try:
            inspect.signature(workflow.fn).bind(*args, **kwargs)
        except TypeError as exc:
            raise WorkflowDefinitionError(
                f"the arguments do not fit workflow {workflow.name!r}{inspect.signature(workflow.fn)}: "
                f"{exc}"
            ) from exc
        tree = codec.to_tree({"args": list(args), "kwargs": kwargs}, root="args")
        self.check_size("the run's arguments", tree)
        self._admit()
        run_id = new_id("wrun_")
        if key is not None and self.cluster is not None:
            # The key is unique in the shared index; whoever inserts it first starts the run.
            holder = await self.cluster.reserve_start_key(key, run_id, workflow.name)
            if holder != run_id:
                return Run(self, holder)
        # The seed of the run's random hook tokens: they are derived from it and the call's
        # index, so a replay re-creates the same token even if its hook_created was lost.
        data: dict[str, Any] = {
            "workflow": workflow.name,
            "input": tree,
            "token_seed": new_token(),
        }
        if self.base_url is not None:
            # Recorded, so webhook.url replays the same even if the server moves.
            data["base_url"] = self.base_url
        if key is not None:
            data["idempotency_key"] = key
        event = Event(new_id("evnt_"), run_id, ev.RUN_CREATED, None, self.clock(), data)
        await self.append(event).wait()
        return Run(self, run_id)

    def get_run(self, run_id: str) -> Run:
        """A handle on a run (reading a missing run raises ``WorkflowRunNotFoundError``)."""
        return Run(self, run_id)

    def hook_record(self, entry: HookEntry) -> Hook:
        stub = Event(entry.hook_id, entry.run_id, ev.HOOK_CREATED, entry.hook_id,
                     entry.created_at, {})  # fmt: skip
        return Hook(
            run_id=entry.run_id,
            hook_id=entry.hook_id,
            token=entry.token,
            owner_id=self.owner_id,
            project_id=self.project_id,
            environment=self.environment,
            created_at=hook_created_at(entry.created_at),
            metadata=codec.from_tree(self.payloads.value(stub, entry.metadata)),
            spec_version=SPEC_VERSION,
            is_webhook=entry.webhook is not None,
        )

    async def get_hook_by_token(self, token: str) -> Hook:
        """The live hook that owns ``token``.

        Raises:
            HookNotFoundError: no live hook owns it.
        """
        entry = self.state.tokens.get(token) if isinstance(token, str) else None
        if entry is None and self.cluster is not None and isinstance(token, str):
            entry = await self.cluster.lookup(token, fresh=True)
        if entry is None:
            raise HookNotFoundError(str(token))
        # Never hand out a hook (a webhook's URL) before its hook_created is on disk: a crash
        # before then would replay it under a new random token.
        await self.writer.flush()
        return self.hook_record(entry)

    async def resume_hook(
        self,
        token_or_hook: str | Hook | HookHandle[Any],
        payload: Any,
        *,
        encryption_key: bytes | str | None = None,
        idempotency_key: str | None = None,
    ) -> Hook:
        """Deliver ``payload`` to the hook: durable before it returns; does not wait for the run.

        Raises:
            HookNotFoundError: unknown token, disposed hook, ended run, or a webhook's token.
            SerializationError: the payload cannot be stored.
            IdempotencyKeyConflictError: the key was used before with another payload.
            OverloadedError: the run's mailbox or the log backlog is full; retry later.
            LogWriteError: the log failed.
            (Nothing is committed when any of these is raised.)
        """
        token = token_or_hook if isinstance(token_or_hook, str) else token_or_hook.token
        entry = self.state.tokens.get(token)
        if self.cluster is not None and (entry is None or idempotency_key is not None):
            return await self._resume_shared(token, entry, payload, encryption_key,
                                             idempotency_key)  # fmt: skip
        prior = None
        if idempotency_key is not None:
            prior = self.state.idempotency.get((token, idempotency_key))
            if prior is not None and entry is not None and entry.hook_id != prior.hook_id:
                prior = None  # the token passed to a new hook: the key was the old hook's
        # A retry whose first delivery succeeded gets its record back even if the hook has been
        # disposed since; anything else needs a live hook.
        target = prior.hook if prior is not None else entry
        if target is None or target.webhook is not None:
            raise HookNotFoundError(token)
        if target.schema is not None:
            payload = validate_payload(load_schema(target.schema), payload, token)
        tree = codec.to_tree(payload, root="payload")
        self.check_size("the payload", tree)
        data: dict[str, Any] = {"payload": tree, "token": token, "external": True}
        if idempotency_key is not None:
            digest = codec.digest(tree)
            if prior is not None:
                if prior.digest != digest:
                    raise IdempotencyKeyConflictError(token, idempotency_key)
                await self.writer.flush()
                return self.hook_record(target)
            data["idempotency_key"] = idempotency_key
            data["digest"] = digest
        assert entry is not None
        if encryption_key is not None and self.payloads.keys is None:
            raise WorkflowDefinitionError(
                "encryption_key= was given but encryption is off; configure "
                "Runtime(encryption_key=...) with that key among the keys"
            )
        await self.deliver_external(entry, ev.HOOK_RECEIVED, data, encryption_key)
        return self.hook_record(entry)

    async def _resume_shared(
        self,
        token: str,
        entry: HookEntry | None,
        payload: Any,
        encryption_key: bytes | str | None,
        idempotency_key: str | None,
    ) -> Hook:
        """``resume_hook`` through the shared inbox: a run on another node, or a keyed delivery
        (the key must be checked across nodes)."""
        from .cluster import StaleHookError

        if entry is not None:
            return await self._resume_via_inbox(
                token, entry, payload, encryption_key, idempotency_key
            )
        assert self.cluster is not None
        if not isinstance(token, str):
            raise HookNotFoundError(str(token))
        try:
            remote = await self.cluster.lookup(token)
            if remote is None and idempotency_key is not None:
                return await self._answer_retry(token, payload, idempotency_key)
            return await self._resume_via_inbox(
                token, remote, payload, encryption_key, idempotency_key
            )
        except StaleHookError:
            remote = await self.cluster.lookup(token, fresh=True)
            if remote is None and idempotency_key is not None:
                return await self._answer_retry(token, payload, idempotency_key)
            return await self._resume_via_inbox(
                token, remote, payload, encryption_key, idempotency_key
            )

    async def _answer_retry(self, token: str, payload: Any, idempotency_key: str) -> Hook:
        """A keyed resume whose hook is gone: a retry of an accepted delivery gets its record
        back (as in one process), anything else is refused.

        Raises:
            HookNotFoundError: no delivery was accepted with this key on this token.
            IdempotencyKeyConflictError: one was, with another payload.
        """
        assert self.cluster is not None
        prior = self.state.idempotency.get((token, idempotency_key))
        hook = prior.hook if prior is not None else None
        digest = prior.digest if prior is not None else None
        if hook is None:
            found = await self.cluster.find_delivery(token, idempotency_key)
            if found is None:
                raise HookNotFoundError(token)
            digest, _, hook = found
        if hook.schema is not None:
            payload = validate_payload(load_schema(hook.schema), payload, token)
        if codec.digest(codec.to_tree(payload, root="payload")) != digest:
            raise IdempotencyKeyConflictError(token, idempotency_key)
        return self.hook_record(hook)

    async def _resume_via_inbox(
        self,
        token: str,
        entry: HookEntry | None,
        payload: Any,
        encryption_key: bytes | str | None,
        idempotency_key: str | None,
    ) -> Hook:
        assert self.cluster is not None
        if entry is None or entry.webhook is not None:
            raise HookNotFoundError(token)
        if entry.schema is not None:
            payload = validate_payload(load_schema(entry.schema), payload, token)
        tree = codec.to_tree(payload, root="payload")
        self.check_size("the payload", tree)
        if encryption_key is not None and self.payloads.keys is None:
            raise WorkflowDefinitionError(
                "encryption_key= was given but encryption is off; configure "
                "Runtime(encryption_key=...) with that key among the keys"
            )
        data: dict[str, Any] = {"payload": tree, "token": token, "external": True}
        if idempotency_key is not None:
            data["idempotency_key"] = idempotency_key
            data["digest"] = codec.digest(tree)
        self.writer.check()
        await self.cluster.deliver(entry, ev.HOOK_RECEIVED, data, encryption_key)
        return self.hook_record(entry)

    async def deliver_external(
        self, entry: HookEntry, kind: str, data: dict[str, Any], key: bytes | str | None = None
    ) -> Event:
        run = self.state.runs[entry.run_id]
        self._admit()
        if run.external + entry.untaken >= self.mailbox_size:
            raise OverloadedError(
                f"the mailbox of run {run.run_id} is full ({self.mailbox_size} payloads waiting "
                "for the workflow to take them); retry shortly",
                retry_after=1.0,
            )
        event = Event(new_id("evnt_"), entry.run_id, kind, entry.hook_id, self.clock(), data)
        ticket = self.append(event, key)
        run.external += 1
        await ticket.wait()
        return event

    async def resume_webhook(self, token: str, request: Request | Any) -> Response:
        """Deliver an HTTP request to the webhook owning ``token``; the response to send back.

        Raises:
            HookNotFoundError: unknown token, disposed webhook, ended run, or a plain hook's
                token (reported alike, so tokens cannot be probed).
            WebhookSignatureError: the request failed the webhook's signature check.
            OverloadedError, SerializationError, LogWriteError: nothing was committed.
        """
        return await resume_webhook(self, token, request)

    async def cancel_run(self, run_id: str, reason: str | None = None) -> None:
        """Cancel a run; a no-op if it has ended. Returns once the cancel is durable.

        Raises:
            WorkflowRunNotFoundError: no run has this id.
            LogWriteError: the log failed.
        """
        run = self.state.runs.get(run_id)
        if run is None and self.cluster is not None:
            remote = await self.cluster.snapshot(run_id)
            if remote is None:
                raise WorkflowRunNotFoundError(run_id)
            if not remote.runs[run_id].finished:
                await self.cluster.cancel(run_id, reason)
            return
        if run is None:
            raise WorkflowRunNotFoundError(run_id)
        if run.finished:
            if run.terminal is not None and run.terminal.position < 0:
                await self.writer.flush()
            return
        self.writer.check()
        event = Event(new_id("evnt_"), run_id, ev.RUN_CANCELLED, None, self.clock(),
                      {"reason": reason})  # fmt: skip
        await self.append(event).wait()

    async def wait_idle(self, timeout: float = math.inf) -> None:
        """Wait until the log has written everything submitted (for tests and shutdown)."""
        with anyio.fail_after(timeout):
            await self.writer.flush()
