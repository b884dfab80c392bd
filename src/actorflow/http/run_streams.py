"""The run routes of issue 14: a run's stream as Server-Sent Events, and ``wake-up``.

``GET PREFIX/runs/<run_id>/streams/<namespace>?start=N`` (bearer) answers
``text/event-stream``. The framing, one SSE event per chunk::

    retry: 1000

    id: 0
    event: chunk
    data: {"stage": "fetching"}

    id: 1
    event: chunk
    data: {"$bytes": "AAEC"}

    event: end
    data: {"reason": "closed", "next": 2}

``id`` is the chunk's index; ``data`` is the chunk as JSON in the codec's tree form (what
``GET .../runs/<id>`` uses for results: ``str`` is a JSON string, ``bytes`` is
``{"$bytes": <base64>}``). A client that lost the connection reconnects with ``?start=<last id
+ 1>``, or sends ``Last-Event-ID: <last id>`` (browsers' ``EventSource`` does), and continues
without a gap or a repeat. The last event is ``end`` (``reason`` is ``closed`` or
``run_ended``; ``next`` is the index after the last chunk); a comment line ``: keep-alive`` is
sent after 15 s without a chunk. A server shutting down ends the response without ``end``: the
client reconnects.

``POST PREFIX/runs/<run_id>/wake-up`` (bearer), with an optional JSON body
``{"correlation_ids": [...]}``, fires the run's pending sleeps now and answers
``{"run_id", "woken": [wait ids]}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
import orjson
from quart import Blueprint, request
from quart import Response as QuartResponse
from werkzeug.exceptions import BadRequest

from ..errors import WorkflowDefinitionError
from ..runtime import codec
from ..runtime.runtime import Runtime
from ..runtime.writable import check_namespace
from .responses import error_response, json_response, problem

__all__ = ["KEEP_ALIVE", "register"]

#: Seconds without a chunk before a keep-alive comment.
KEEP_ALIVE = 15.0


class Edge(Protocol):
    """What these routes use of the app's views (``app._Edge``)."""

    rt: Runtime
    _drain_deadline: float | None
    _waiting: set[anyio.CancelScope]

    def _authorize(self) -> None: ...

    async def _read_json(self, *, required: bool) -> dict[str, Any]: ...


def register(bp: Blueprint, edge: Edge, prefix: str) -> None:
    """Add the stream and wake-up routes (bearer routes: only when a secret is set)."""
    routes = _Routes(edge)
    bp.add_url_rule(
        f"{prefix}/runs/<run_id>/streams/<namespace>", "run_stream", routes.stream,
        methods=["GET"],
    )  # fmt: skip
    bp.add_url_rule(f"{prefix}/runs/<run_id>/wake-up", "wake_up", routes.wake_up, methods=["POST"])


class _Routes:
    def __init__(self, edge: Edge) -> None:
        self.edge = edge

    async def stream(self, run_id: str, namespace: str) -> QuartResponse:
        edge = self.edge
        try:
            edge._authorize()
            try:
                check_namespace(namespace)
                start = _start_index()
            except WorkflowDefinitionError as exc:
                return problem(400, "BadRequest", str(exc))
            run = edge.rt.get_run(run_id)
            await run.status()  # 404 for an unknown run, before the stream starts
            reader = edge.rt.front.stream_reader(run_id, namespace, start)
        except Exception as exc:
            return error_response(exc, where="run_stream")
        response = QuartResponse(
            self._events(reader),
            status=200,
            content_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )
        response.timeout = None  # a stream lasts as long as its run: no response timeout
        return response

    async def _events(self, reader: Any) -> AsyncIterator[bytes]:
        edge = self.edge
        yield b"retry: 1000\n\n"
        while True:
            deadline = edge._drain_deadline
            wait = KEEP_ALIVE
            if deadline is not None:
                wait = min(wait, deadline - anyio.current_time())
                if wait <= 0:
                    return  # shutting down: the client reconnects where it was
            ended = False
            item = None
            # A shutdown that starts while this waits cuts the wait (``_Edge.drain``); no
            # yield happens inside the scope (an async generator must not yield in one).
            with anyio.CancelScope() as scope:
                edge._waiting.add(scope)
                try:
                    item = await reader.next_within(wait)
                except StopAsyncIteration:
                    ended = True
                finally:
                    edge._waiting.discard(scope)
            if scope.cancelled_caught:
                return  # shutting down: the client reconnects where it was
            if ended:
                end = {"reason": reader.end_reason, "next": reader.next_index}
                yield b"event: end\ndata: " + orjson.dumps(end) + b"\n\n"
                return
            if item is None:
                yield b": keep-alive\n\n"
                continue
            index, value = item
            data = orjson.dumps(codec.to_tree(value, root="chunk"))
            yield b"id: %d\nevent: chunk\ndata: %s\n\n" % (index, data)

    async def wake_up(self, run_id: str) -> QuartResponse:
        edge = self.edge
        try:
            edge._authorize()
            data = await edge._read_json(required=False)
            ids = data.get("correlation_ids")
            if ids is not None and (
                not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
            ):
                raise BadRequest('"correlation_ids" must be a list of wait ids when given')
            woken = await edge.rt.get_run(run_id).wake_up(ids)
        except Exception as exc:
            return error_response(exc, where="wake_up")
        return json_response(200, {"run_id": run_id, "woken": woken})


def _start_index() -> int:
    """``?start=N``, else one past ``Last-Event-ID``, else 0.

    Raises:
        WorkflowDefinitionError: not a non-negative integer.
    """
    given = request.args.get("start")
    if given is None:
        last = request.headers.get("last-event-id")
        if last is None or not last.strip():
            return 0
        given, offset = last.strip(), 1
    else:
        offset = 0
    if not given.isdigit() or len(given) > 18:
        raise WorkflowDefinitionError(
            f"start must be a chunk index (an integer >= 0), not {given[:40]!r}"
        )
    return int(given) + offset
