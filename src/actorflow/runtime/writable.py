"""``af.get_writable()``: the writer a workflow or a step gets for one of its run's streams.

In workflow code a write is a command of the run (``StreamOp``): the actor appends it in the
order the workflow made it, and it is durable before anything the workflow does after it. In a
step, ``await write(chunk)`` returns once the chunk is durable (fsynced, or committed in
PostgreSQL).

The rule for a step retried after a crash or an error: chunks are numbered per writer. A step's
attempt numbers its writes to each namespace 0, 1, 2, ...; the n-th write is appended only if no
earlier attempt of the same step already put an n-th chunk there, and is otherwise acknowledged
as already durable. Readers therefore never see a chunk twice: an attempt that repeats the
earlier output (as a deterministic step does) continues exactly where the crashed one stopped;
one whose output differs has its first n writes dropped in favour of those already read. The
workflow's own writes follow the same rule across replays.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import WorkflowDefinitionError
from .core.machine import current_machine
from .core.ops import StreamOp

__all__ = ["DEFAULT_NAMESPACE", "StepStreams", "StreamSink", "Writable", "check_namespace",
           "get_writable", "step_streams"]  # fmt: skip

DEFAULT_NAMESPACE = "default"
#: Namespaces travel in URLs (``GET .../streams/<namespace>``): keep them to safe characters.
_NAMESPACE = re.compile(r"[A-Za-z0-9._~:-]{1,200}")


def check_namespace(namespace: object) -> str:
    """``namespace`` if it is a valid stream name.

    Raises:
        WorkflowDefinitionError: not 1-200 characters of ``A-Z a-z 0-9 . _ ~ : -``.
    """
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise WorkflowDefinitionError(
            f"a stream namespace is 1-200 characters of A-Z, a-z, 0-9, '.', '_', '~', ':' and "
            f"'-', not {namespace!r}"
        )
    return namespace


class StreamSink(Protocol):
    """Where a step's writes go (the runtime's ``Streams``)."""

    async def write_from_step(
        self, ctx: StepStreams, namespace: str, seq: int, chunk: Any
    ) -> None: ...

    async def close_from_step(self, ctx: StepStreams, namespace: str) -> None: ...


@dataclass(slots=True)
class StepStreams:
    """One step attempt's writing context (set by the step executor around the attempt)."""

    sink: StreamSink
    run_id: str
    step_id: str
    attempt: int
    #: Writes so far in this attempt, per namespace; -1 once this attempt closed it.
    seqs: dict[str, int] = field(default_factory=dict)


step_streams: ContextVar[StepStreams | None] = ContextVar("actorflow_step_streams", default=None)


class Writable:
    """A writer on one of the run's streams. Get one with ``af.get_writable(namespace)``."""

    __slots__ = ("namespace", "_step")

    def __init__(self, namespace: str, step: StepStreams | None) -> None:
        self.namespace = namespace
        self._step = step

    def __repr__(self) -> str:
        return f"<Writable {self.namespace!r}>"

    def write(self, chunk: Any) -> Awaitable[None]:
        """Append ``chunk`` (bytes, str or any value the codec stores) to the stream.

        Raises:
            SerializationError: the chunk cannot be stored (nothing written).
            WorkflowDefinitionError: the stream is closed, or the run has ended.
            OverloadedError, LogWriteError: the log cannot take it now (in a step: retried).
        """
        step = self._step
        if step is None:
            return StreamOp(self.namespace, chunk)
        seq = step.seqs.get(self.namespace, 0)
        if seq < 0:
            raise WorkflowDefinitionError(f"stream {self.namespace!r} is closed")
        step.seqs[self.namespace] = seq + 1
        return step.sink.write_from_step(step, self.namespace, seq, chunk)

    def close(self) -> Awaitable[None]:
        """Close the stream: readers end after its last chunk. Closing twice is a no-op.

        Raises:
            WorkflowDefinitionError: (in a workflow) it was closed before.
        """
        step = self._step
        if step is None:
            return StreamOp(self.namespace, None, close=True)
        step.seqs[self.namespace] = -1
        return step.sink.close_from_step(step, self.namespace)


def get_writable(namespace: str = DEFAULT_NAMESPACE) -> Writable:
    """A writer on the current run's stream ``namespace``, in a workflow or in a step.

    Raises:
        WorkflowDefinitionError: outside workflows and steps, or an invalid namespace.
    """
    check_namespace(namespace)
    if current_machine() is not None:
        return Writable(namespace, None)
    step = step_streams.get()
    if step is None:
        raise WorkflowDefinitionError(
            "af.get_writable() works only inside a workflow or a running step"
        )
    return Writable(namespace, step)
