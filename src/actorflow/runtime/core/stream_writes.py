"""How a workflow's stream writes become commands: numbered per namespace, in call order.

Not matched against the history like other calls: the driver is handed every write again on
replay and appends only those whose number the log does not hold yet, so the chunk is the same
whether or not it was recorded before a crash.
"""

from __future__ import annotations

from typing import Any

from ...errors import WorkflowDefinitionError
from .commands import CloseStream, Command, WriteChunk
from .ops import StreamOp

__all__ = ["stream_command"]


def stream_command(writes: dict[str, int], op: StreamOp, run_id: str, codec: Any) -> Command:
    """The command for ``op``; ``writes`` holds each namespace's next number (-1: closed).

    Raises:
        WorkflowDefinitionError: the namespace was closed.
    """
    seq = writes.get(op.namespace, 0)
    if seq < 0:
        raise WorkflowDefinitionError(
            f"stream {op.namespace!r} of run {run_id} is closed; it takes no more chunks"
        )
    if op.close:
        writes[op.namespace] = -1
        return CloseStream(op.namespace)
    tree = codec.to_tree(op.chunk, root="chunk")
    writes[op.namespace] = seq + 1
    return WriteChunk(op.namespace, seq, tree)
