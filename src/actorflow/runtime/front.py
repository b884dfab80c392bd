"""The outside API of a runtime: start runs, resume hooks and webhooks, read and cancel runs.

``Runtime`` exposes these methods and ``actorflow.api`` the same as functions. The front writes
through the journal and reaches runs through ``Ownership``: it never knows whether a run lives in
this process or another.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

from ..errors import (
    HookNotFoundError,
    IdempotencyKeyConflictError,
    RunExpiredError,
    WorkflowDefinitionError,
    WorkflowRunNotFoundError,
)
from . import codec
from .core import events as ev
from .core.events import Event
from .core.ops import HookHandle
from .describe import run_info
from .ids import id_time, new_id, new_token
from .journal import Journal
from .limits import Identity, Limits
from .ownership import Ownership, StaleHookError
from .payloads import Payloads
from .query import RunInfo
from .records import SPEC_VERSION, Hook, Run, hook_created_at
from .registry import Registry
from .state import HookEntry, RunState, State
from .streams import ChunkReader, Streams
from .typed_hooks import load_schema, validate_payload
from .wake_up import pending_sleeps, wake_up
from .webhook_request import Request, Response
from .webhooks import Webhooks
from .workflow import WorkflowFunction

__all__ = ["Front"]


#: Trees that decode to an immutable value, which every caller may share.
_SHARED_TREES = frozenset({type(None), str, int, float, bool})

#: No actorflow run id was made before 2024-01-01: an older one is made up, never expired.
_FIRST_ID = 1_704_067_200.0


class Front:
    """The public API front; also what a ``Run`` handle reads through."""

    def __init__(
        self,
        *,
        state: State,
        journal: Journal,
        ownership: Ownership,
        payloads: Payloads,
        registry: Registry,
        limits: Limits,
        identity: Identity,
        webhooks: Webhooks,
        clock: Callable[[], float],
        streams: Streams | None = None,
        retention: float = math.inf,
    ) -> None:
        self._state = state
        self._journal = journal
        self._ownership = ownership
        self._payloads = payloads
        self._registry = registry
        self._limits = limits
        self._identity = identity
        self._webhooks = webhooks
        self._clock = clock
        self._streams = streams
        self._retention = retention

    # -- starting runs -----------------------------------------------------------------------

    async def start(
        self,
        key: str | None,
        workflow: WorkflowFunction[..., Any] | str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Run:
        """Start a run (at most one per ``key`` when one is given)."""
        if key is not None:
            prior = self._state.start_keys.get(key)
            if prior is None:
                prior = await self._ownership.start_key(key)
            if prior is not None:
                await self._journal.flush()  # the first start may still be on its way to disk
                return Run(self, prior)
        workflow = self._registry.find(workflow)
        try:
            inspect.signature(workflow.fn).bind(*args, **kwargs)
        except TypeError as exc:
            raise WorkflowDefinitionError(
                f"the arguments do not fit workflow {workflow.name!r}{inspect.signature(workflow.fn)}: "
                f"{exc}"
            ) from exc
        tree = codec.to_tree({"args": list(args), "kwargs": kwargs}, root="args")
        encoded = {"input": self._limits.check_size("the run's arguments", tree)}
        self._journal.admit()
        run_id = new_id("wrun_")
        if key is not None:
            # Where the key index is shared, whoever inserts it first starts the run.
            holder = await self._ownership.reserve_start_key(key, run_id, workflow.name)
            if holder != run_id:
                return Run(self, holder)
        # The seed of the run's random hook tokens: they are derived from it and the call's
        # index, so a replay re-creates the same token even if its hook_created was lost.
        data: dict[str, Any] = {
            "workflow": workflow.name,
            "input": tree,
            "token_seed": new_token(),
        }
        base_url = self._identity.base_url
        if base_url is not None:
            # Recorded, so webhook.url replays the same even if the server moves.
            data["base_url"] = base_url
        if key is not None:
            data["idempotency_key"] = key
        if self._identity.version is not None:
            data["version"] = self._identity.version  # which runtimes may run it
        event = Event(new_id("evnt_"), run_id, ev.RUN_CREATED, None, self._clock(), data)
        await self._journal.record(event, encoded=encoded).wait()
        return Run(self, run_id)

    # -- hooks -------------------------------------------------------------------------------

    def hook_record(self, entry: HookEntry) -> Hook:
        """The outside's record of a live (or just-used) hook.

        Every resume answers with it, so it is made once per hook and kept on the entry: the
        metadata is decrypted once, not at every reply. Metadata that holds containers is
        decoded afresh from the kept tree for each caller, so no caller can change what
        another one is handed.
        """
        kept: tuple[Hook, Any] | None = entry.record
        if kept is None:
            stub = Event(entry.hook_id, entry.run_id, ev.HOOK_CREATED, entry.hook_id,
                         entry.created_at, {})  # fmt: skip
            tree = self._payloads.value(stub, entry.metadata)
            identity = self._identity
            hook = Hook(
                run_id=entry.run_id,
                hook_id=entry.hook_id,
                token=entry.token,
                owner_id=identity.owner_id,
                project_id=identity.project_id,
                environment=identity.environment,
                created_at=hook_created_at(entry.created_at),
                metadata=codec.from_tree(tree),
                spec_version=SPEC_VERSION,
                is_webhook=entry.webhook is not None,
            )
            kept = entry.record = (hook, None if type(tree) in _SHARED_TREES else tree)
        hook, tree = kept
        return hook if tree is None else dataclasses.replace(hook, metadata=codec.from_tree(tree))

    async def get_hook_by_token(self, token: str) -> Hook:
        """The live hook that owns ``token``.

        Raises:
            HookNotFoundError: no live hook owns it.
        """
        if not isinstance(token, str):
            raise HookNotFoundError(str(token))
        entry = self._state.tokens.get(token)
        if entry is None:
            entry = await self._ownership.lookup(token, fresh=True)
        if entry is None:
            raise HookNotFoundError(token)
        # Never hand out a hook (a webhook's URL) before its hook_created is on disk: a crash
        # before then would replay it under a new random token.
        await self._journal.flush()
        return self.hook_record(entry)

    async def resume_hook(
        self,
        token_or_hook: str | Hook | HookHandle[Any],
        payload: Any,
        *,
        encryption_key: bytes | str | None = None,
        idempotency_key: str | None = None,
    ) -> Hook:
        """See ``Runtime.resume_hook``."""
        token = token_or_hook if isinstance(token_or_hook, str) else token_or_hook.token
        if not isinstance(token, str):
            raise HookNotFoundError(str(token))
        ownership = self._ownership
        for fresh in (False, True):
            # A hook of a run owned here is in this process's index (every ownership looks
            # there first): spare the call for the common case.
            entry = None if fresh else self._state.tokens.get(token)
            if entry is None:
                entry = await ownership.lookup(token, fresh=fresh)
            prior = None
            if idempotency_key is not None:
                prior = await ownership.prior_delivery(token, idempotency_key, entry)
            # A retry whose first delivery succeeded gets its record back even if the hook has
            # been disposed since; anything else needs a live hook.
            target = prior.hook if prior is not None else entry
            if target is None or target.webhook is not None:
                raise HookNotFoundError(token)
            value = payload
            if target.schema is not None:
                value = validate_payload(load_schema(target.schema), payload, token)
            tree = codec.to_tree(value, root="payload")
            # Serialized once: the size check's bytes are what is encrypted or stored.
            encoded = {"payload": self._limits.check_size("the payload", tree)}
            data: dict[str, Any] = {"payload": tree, "token": token, "external": True}
            if idempotency_key is not None:
                digest = codec.digest(tree)
                if prior is not None:
                    if prior.digest != digest:
                        raise IdempotencyKeyConflictError(token, idempotency_key)
                    await self._journal.flush()
                    return self.hook_record(target)
                data["idempotency_key"] = idempotency_key
                data["digest"] = digest
            assert entry is not None
            if encryption_key is not None and self._payloads.keys is None:
                raise WorkflowDefinitionError(
                    "encryption_key= was given but encryption is off; configure "
                    "Runtime(encryption_key=...) with that key among the keys"
                )
            try:
                await ownership.deliver(entry, ev.HOOK_RECEIVED, data, encryption_key, encoded)
            except StaleHookError:
                if fresh:
                    raise
                continue
            return self.hook_record(entry)
        raise AssertionError("unreachable")

    async def resume_webhook(self, token: str, request: Request | Any) -> Response:
        """See ``Runtime.resume_webhook``."""
        return await self._webhooks.resume(token, request)

    # -- runs --------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        return Run(self, run_id)

    async def run_state(self, run_id: str) -> tuple[RunState, State | None]:
        """A run's state, and the snapshot it came from when another process owns the run.

        Raises:
            WorkflowRunNotFoundError: no run has this id.
        """
        run = self._state.runs.get(run_id)
        if run is not None:
            return run, None
        found = await self._ownership.snapshot(run_id)
        run = None if found is None else found.runs.get(run_id)
        if run is None:
            raise self._not_found(run_id)
        return run, found

    def _not_found(self, run_id: str) -> WorkflowRunNotFoundError:
        """``RunExpiredError`` for a run id old enough to have ended and expired.

        Nothing of an expired run is kept, so "expired" rests on the id itself: a run id this
        runtime could have issued (ids carry their creation time, and none was made before
        2024) that is older than the retention period. A newer unknown id cannot be an expired
        run: it is not found.
        """
        created = id_time(run_id, "wrun_")
        if created is not None and _FIRST_ID <= created <= self._clock() - self._retention:
            return RunExpiredError(run_id, self._retention)
        return WorkflowRunNotFoundError(run_id)

    async def live_hooks(self, run_id: str) -> tuple[RunState, list[HookEntry]]:
        """A run's state and its live hooks, each durable (their webhook URLs may be shown).

        Raises:
            WorkflowRunNotFoundError: no run has this id.
        """
        # The hooks (webhook URLs) must be on disk before anyone can see them.
        await self._journal.flush()
        run, snapshot = await self.run_state(run_id)
        tokens = (snapshot or self._state).tokens
        hooks = [tokens[t] for t in list(run.hooks or ()) if t in tokens]
        return run, hooks

    async def run_info(self, run_id: str) -> RunInfo:
        """A run in full, with what it waits on (see ``Run.info``).

        Raises:
            WorkflowRunNotFoundError: no run has this id.
        """
        # Its hooks' tokens (webhook URLs) are shown only once on disk.
        await self._journal.flush()
        run, snapshot = await self.run_state(run_id)
        return run_info(run, snapshot or self._state)

    def is_local(self, run: RunState) -> bool:
        """True for a run this process owns (its end is announced here, not polled)."""
        return self._state.runs.get(run.run_id) is run

    @property
    def poll_interval(self) -> float:
        return self._ownership.poll_interval

    def decode_value(self, event: Event, key: str) -> Any:
        """A user value of an event, decrypted and decoded."""
        return codec.from_tree(self._payloads.value(event, event.data.get(key)))

    def decode_error(self, event: Event) -> BaseException:
        return codec.error_from_tree(self._payloads.value(event, event.data.get("error")))

    async def settled(self) -> None:
        """Return once everything recorded so far is durable (reads after a write)."""
        await self._journal.flush()

    async def cancel_run(self, run_id: str, reason: str | None = None) -> None:
        """See ``Runtime.cancel_run``."""
        run = self._state.runs.get(run_id)
        if run is None:
            remote = await self._ownership.snapshot(run_id)
            if remote is None or run_id not in remote.runs:
                raise self._not_found(run_id)
            if not remote.runs[run_id].finished:
                await self._ownership.cancel(run_id, reason)
            return
        if run.finished:
            await self._journal.settle(run.terminal)
            return
        self._journal.check()
        event = Event(new_id("evnt_"), run_id, ev.RUN_CANCELLED, None, self._clock(),
                      {"reason": reason})  # fmt: skip
        await self._journal.record(event).wait()

    # -- streams and wake-ups (``streams.py``, ``wake_up.py``) ---------------------------------

    def stream_reader(self, run_id: str, namespace: str, start: int) -> ChunkReader:
        """``(index, chunk)`` of a run's stream from ``start`` (see ``ChunkReader``)."""
        assert self._streams is not None
        return self._streams.reader(run_id, namespace, start, self._ownership)

    async def list_streams(self, run_id: str) -> list[str]:
        """The namespaces a run has written to. Raises ``WorkflowRunNotFoundError``."""
        assert self._streams is not None
        return await self._streams.namespaces(run_id, self._ownership)

    async def wake_up(self, run_id: str, correlation_ids: list[str] | None = None) -> list[str]:
        """Fire the run's pending sleeps now (those in ``correlation_ids`` if given); their ids.

        Raises:
            WorkflowRunNotFoundError: no run has this id.
            LogWriteError: the log failed.
        """
        run = self._state.runs.get(run_id)
        if run is not None:
            return await wake_up(self._journal, self._state, run, correlation_ids)
        remote = await self._ownership.snapshot(run_id)
        if remote is None or run_id not in remote.runs:
            raise WorkflowRunNotFoundError(run_id)
        fired = pending_sleeps(remote, remote.runs[run_id], correlation_ids)
        if fired:
            await self._ownership.wake_remote(run_id, fired)
        return fired
