"""Records the runtime hands out: ``Hook`` (a frozen record) and ``Run`` (a handle)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ..errors import (
    WorkflowRunCancelledError,
    WorkflowRunFailedError,
)

if TYPE_CHECKING:
    from .core.events import Event
    from .parking import Parking
    from .query import RunInfo
    from .state import RunState, State


class RunSource(Protocol):
    """What a ``Run`` handle reads through (the runtime's API front)."""

    @property
    def poll_interval(self) -> float: ...

    async def run_state(self, run_id: str) -> tuple[RunState, State | None]: ...

    def is_local(self, run: RunState) -> bool: ...

    def decode_value(self, event: Event, key: str) -> Any: ...

    def decode_error(self, event: Event) -> BaseException: ...

    async def cancel_run(self, run_id: str, reason: str | None = None) -> None: ...

    async def run_info(self, run_id: str) -> RunInfo: ...

    def stream_reader(self, run_id: str, namespace: str, start: int) -> ChunkSource: ...

    async def list_streams(self, run_id: str) -> list[str]: ...

    async def wake_up(self, run_id: str, correlation_ids: list[str] | None = None) -> list[str]: ...


class ChunkSource(Protocol):
    """``(index, chunk)`` pairs of one stream (``streams.ChunkReader``)."""

    next_index: int

    def __aiter__(self) -> ChunkSource: ...

    async def __anext__(self) -> tuple[int, Any]: ...

    async def aclose(self) -> None: ...


__all__ = ["SPEC_VERSION", "Hook", "Readable", "Run"]

SPEC_VERSION = 1


@dataclass(frozen=True, slots=True)
class Hook:
    """A live hook as the outside sees it. Returned by ``resume_hook`` and ``get_hook_by_token``."""

    run_id: str
    hook_id: str
    token: str
    owner_id: str
    project_id: str
    environment: str
    created_at: datetime
    metadata: Any
    spec_version: int
    is_webhook: bool

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``created_at`` as ISO 8601)."""
        return {
            "run_id": self.run_id,
            "hook_id": self.hook_id,
            "token": self.token,
            "owner_id": self.owner_id,
            "project_id": self.project_id,
            "environment": self.environment,
            "created_at": self.created_at.isoformat(),
            "metadata": self.metadata,
            "spec_version": self.spec_version,
            "is_webhook": self.is_webhook,
        }


class Run:
    """A handle on a workflow run. Get one from ``start`` or ``get_run``; never raises itself."""

    __slots__ = ("_rt", "run_id")

    def __init__(self, rt: RunSource, run_id: str) -> None:
        self._rt = rt
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"<Run {self.run_id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.run_id == self.run_id

    def __hash__(self) -> int:
        return hash(self.run_id)

    async def _state(self) -> RunState:
        return (await self._rt.run_state(self.run_id))[0]

    async def status(self) -> str:
        """``pending``, ``running``, ``completed``, ``failed`` or ``cancelled``.

        Raises:
            WorkflowRunNotFoundError: no run has this id.
        """
        return (await self._state()).status

    async def info(self) -> RunInfo:
        """The run's workflow name, status, created, started and completed times, version,
        and what it is waiting on (hooks since when, sleeps until when, steps and retries).

        Raises:
            WorkflowRunNotFoundError: no run has this id.
        """
        return await self._rt.run_info(self.run_id)

    async def parked(self) -> Parking | None:
        """Why the run is parked (its code does not fit its history), or ``None``.

        A parked run keeps the status it had (``pending`` or ``running``); see ``parking.py``.

        Raises:
            WorkflowRunNotFoundError: no run has this id.
        """
        from .parking import Parking

        run = await self._state()
        return None if run.parked is None or run.finished else Parking.of(run.parked)

    async def wait(self, timeout: float | None = None) -> None:
        """Wait until the run has ended and its end is durable.

        Raises:
            WorkflowRunNotFoundError: no run has this id.
            TimeoutError: ``timeout`` seconds passed first.
        """
        run = await self._state()
        if run.terminal is not None and run.terminal.position >= 0:
            return
        with anyio.fail_after(timeout):
            while not self._rt.is_local(run):
                # Owned by another node: its end shows in the database; poll for it.
                await anyio.sleep(self._rt.poll_interval)
                run = await self._state()
                if run.terminal is not None and run.terminal.position >= 0:
                    return
            if run.done is None:
                run.done = anyio.Event()
            await run.done.wait()

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the end of the run: its return value, or its error.

        Raises:
            WorkflowRunNotFoundError: no run has this id.
            WorkflowRunFailedError: the run failed (``cause`` holds its error).
            WorkflowRunCancelledError: the run was cancelled.
            TimeoutError: ``timeout`` seconds passed first.
        """
        await self.wait(timeout)
        run = await self._state()
        terminal = run.terminal
        assert terminal is not None
        rt = self._rt
        if run.status == "completed":
            return rt.decode_value(terminal, "result")
        if run.status == "failed":
            cause = rt.decode_error(terminal)
            raise WorkflowRunFailedError(self.run_id, cause) from cause
        raise WorkflowRunCancelledError(self.run_id, terminal.data.get("reason"))

    async def cancel(self, reason: str | None = None) -> None:
        """Cancel the run (a no-op once it has ended). Returns when the cancel is durable.

        Raises:
            WorkflowRunNotFoundError: no run has this id.
        """
        await self._rt.cancel_run(self.run_id, reason)

    def readable(self, namespace: str = "default", start_index: int = 0) -> Readable:
        """The run's stream ``namespace`` from chunk ``start_index`` on, as an async iterator.

        It yields each chunk in order, waits for new ones, and ends once the stream is closed
        or the run has ended. ``readable.next_index`` is where to resume after a break.

        Raises:
            WorkflowDefinitionError: an invalid namespace or ``start_index``.
            WorkflowRunNotFoundError: (when iterated) no run has this id.
        """
        from .writable import check_namespace

        return Readable(self._rt.stream_reader(self.run_id, check_namespace(namespace),
                                               start_index))  # fmt: skip

    async def list_streams(self) -> list[str]:
        """The namespaces of the streams the run has written to (or closed), sorted.

        Raises:
            WorkflowRunNotFoundError: no run has this id.
        """
        return await self._rt.list_streams(self.run_id)

    async def wake_up(self, correlation_ids: list[str] | None = None) -> list[str]:
        """Fire the run's pending sleeps now (only those in ``correlation_ids``, if given).

        Recorded as the sleeps' ``wait_completed`` events, so a replay agrees. Returns the ids
        of the sleeps fired, once durable; hook timeouts are not sleeps and stay.

        Raises:
            WorkflowRunNotFoundError: no run has this id.
            LogWriteError: the log failed.
        """
        return await self._rt.wake_up(self.run_id, correlation_ids)


class Readable:
    """A run's stream as an async iterator of chunks (``run.readable()``)."""

    __slots__ = ("_source",)

    def __init__(self, source: ChunkSource) -> None:
        self._source = source

    @property
    def next_index(self) -> int:
        """The index of the next chunk this reader will yield."""
        return self._source.next_index

    def __aiter__(self) -> Readable:
        return self

    async def __anext__(self) -> Any:
        return (await self._source.__anext__())[1]

    async def aclose(self) -> None:
        await self._source.aclose()


def hook_created_at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
