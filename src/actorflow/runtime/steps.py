"""Runs steps: bounded concurrency, retries with backoff, durable retry times.

A step is started by its ``step_started`` event and ends with ``step_completed`` or
``step_failed``. Between attempts a ``step_retrying`` event records when to try again, so a
restart neither forgets a backoff nor retries early. A step that was running when the process
died runs again after recovery (steps are at-least-once; ``get_step_metadata().step_id`` is the
idempotency key for their side effects).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc

from ..errors import FatalError, RetryableError, StorageError, WorkflowDefinitionError
from . import codec
from .core import events as ev
from .core.events import Event
from .core.machine import clear_current_machine
from .durations import parse_duration
from .journal import Journal
from .limits import Identity
from .payloads import Payloads
from .state import PendingStep, State
from .workflow import StepMetadata, StepSignal, WorkflowMetadata, find_step, step_context
from .writable import StepStreams, StreamSink, step_streams

__all__ = ["StepExecutor", "backoff"]

logger = logging.getLogger("actorflow.runtime")

#: Loop turns the log waits after a step starts, for the step's own outcome (see ``start``).
_INSTANT_STEP_TURNS = 2


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1, 2, 4, ... capped at 60)."""
    return float(min(2 ** (attempt - 1), 60))


class StepExecutor:
    def __init__(
        self,
        journal: Journal,
        state: State,
        payloads: Payloads,
        identity: Identity,
        max_concurrent: int,
    ) -> None:
        self._journal = journal
        self._state = state
        self._payloads = payloads
        self._identity = identity
        self._clock = journal.clock
        self._limiter = anyio.CapacityLimiter(max_concurrent)
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._signals: dict[str, StepSignal] = {}
        self._run_ids: dict[str, str] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        #: Where steps' stream writes go (the runtime's ``Streams``), once set.
        self.streams: StreamSink | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Own the steps' tasks while the runtime runs."""
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._task_group = None

    @property
    def running(self) -> int:
        return len(self._scopes)

    def start(self, step_id: str) -> None:
        """Run the started step ``step_id`` in the supervisor's task group."""
        assert self._task_group is not None, "the runtime is not running"
        self._task_group.start_soon(self._run, step_id)
        # The step's task reaches its function two turns from now (its start, the limiter's
        # checkpoint): one that returns at once then shares its step_started's fsync.
        self._journal.writer.linger(_INSTANT_STEP_TURNS)

    def cancel(self, step_ids: list[str]) -> None:
        """Stop the attempts of steps whose run ended, recording each as ``step_cancelled``.

        Called as the run's end is recorded: the steps are void from then on (the state no
        longer lists them), so whatever an attempt returns later is never recorded.
        """
        journal = self._journal
        for step_id in step_ids:
            scope = self._scopes.get(step_id)
            signal = self._signals.get(step_id)
            if scope is None or (signal is not None and signal.cancelled):
                continue  # not running here, or told to stop before (and recorded so)
            run_id = self._run_ids.get(step_id)
            if run_id is not None:
                try:
                    journal.record(journal.event(run_id, ev.STEP_CANCELLED, step_id,
                                                 {"reason": "run_ended"}))  # fmt: skip
                except StorageError:
                    pass  # the log failed: nothing more is recorded anyway
            self.stop(step_id)

    def stop(self, step_id: str) -> None:
        """Tell a running step to stop: its signal is set and its task cancelled."""
        signal = self._signals.get(step_id)
        if signal is not None:
            signal.cancelled = True
        scope = self._scopes.get(step_id)
        if scope is not None:
            scope.cancel()

    async def _run(self, step_id: str) -> None:
        # The task was spawned during a machine turn and copied its context: a step is not
        # workflow code, so clear the machine (else step calls inside it would become ops).
        clear_current_machine()
        scope = anyio.CancelScope()
        self._scopes[step_id] = scope
        self._signals[step_id] = StepSignal()
        step = self._state.steps.get(step_id)
        if step is not None:
            self._run_ids[step_id] = step.run_id
        try:
            with scope:
                async with self._limiter:
                    await self._attempts(step_id)
        except StorageError as exc:
            logger.error("step %s stopped: the log failed: %s", step_id, exc)
        except Exception as exc:
            # Not the step's own error (those are recorded by _attempts) but ours, e.g. its
            # recorded arguments no longer decrypt: fail the step, never the task group.
            logger.exception("step %s could not run", step_id)
            step = self._state.steps.get(step_id)
            if step is not None:
                try:
                    self._finish(step, ev.STEP_FAILED, {"error": codec.error_to_tree(exc)})
                except StorageError:
                    pass
        finally:
            self._scopes.pop(step_id, None)
            self._signals.pop(step_id, None)
            self._run_ids.pop(step_id, None)

    async def _attempts(self, step_id: str) -> None:
        state = self._state
        clock = self._clock
        step = state.steps.get(step_id)
        if step is None:
            return
        run = state.runs[step.run_id]
        function = find_step(step.name)
        if function is None:
            self._finish(step, ev.STEP_FAILED, {"error": codec.error_to_tree(FatalError(
                f"step {step.name!r} is not defined in this process; import the module that "
                "defines it before starting the runtime"))})  # fmt: skip
            return
        stub = Event(step_id, step.run_id, ev.STEP_STARTED, step_id, step.started_at, {})
        inputs = codec.from_tree(self._payloads.value(stub, step.args))
        workflow_meta = WorkflowMetadata(
            run.run_id,
            run.workflow_name,
            datetime.fromtimestamp(run.created_at, UTC),
            self._identity.base_url,
        )
        while True:
            delay = step.retry_at - clock()
            if delay > 0:
                await anyio.sleep(delay)
            meta = StepMetadata(step_id, step.attempt, datetime.fromtimestamp(clock(), UTC),
                                self._signals.get(step_id) or StepSignal())  # fmt: skip
            token = step_context.set((meta, workflow_meta))
            writing = None
            if self.streams is not None:
                writing = step_streams.set(
                    StepStreams(self.streams, run.run_id, step_id, step.attempt)
                )
            try:
                result = await function.fn(*inputs["args"], **inputs["kwargs"])
            except FatalError as exc:
                self._finish(step, ev.STEP_FAILED, {"error": codec.error_to_tree(exc)})
                return
            except Exception as exc:
                if step.attempt > step.max_retries:
                    self._finish(step, ev.STEP_FAILED, {"error": codec.error_to_tree(exc)})
                    return
                retry_at = clock() + self._delay(exc, step.attempt, clock())
                if state.steps.get(step_id) is not step:
                    return
                journal = self._journal
                journal.record(journal.event(step.run_id, ev.STEP_RETRYING, step_id, {
                    "attempt": step.attempt, "retry_at": retry_at,
                    "error": codec.error_to_tree(exc),
                }))  # fmt: skip
                continue
            finally:
                step_context.reset(token)
                if writing is not None:
                    step_streams.reset(writing)
            try:
                tree = codec.to_tree(result, root="result")
            except Exception as exc:  # an unencodable result fails the step, not the runtime
                self._finish(step, ev.STEP_FAILED, {"error": codec.error_to_tree(exc)})
                return
            self._finish(step, ev.STEP_COMPLETED, {"result": tree})
            return

    @staticmethod
    def _delay(exc: Exception, attempt: int, now: float) -> float:
        if isinstance(exc, RetryableError):
            after: Any = exc.retry_after
            if after is None:
                return 1.0
            if isinstance(after, datetime):
                return max(0.0, after.timestamp() - now)
            try:
                return parse_duration(after)
            except WorkflowDefinitionError:
                return 1.0
        return backoff(attempt)

    def _finish(self, step: PendingStep, kind: str, data: dict[str, Any]) -> None:
        if self._state.steps.get(step.step_id) is not step:
            return  # the run ended meanwhile
        journal = self._journal
        journal.record(journal.event(step.run_id, kind, step.step_id, data))
