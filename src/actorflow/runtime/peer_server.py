"""This node's peer listener: links from the other nodes of the schema, deliveries forwarded in.

Each link is authenticated first (``peer_link``). Then every frame is a request ``{"i": id,
...}`` with an event record as its body; ``take`` handles it at once, in the order read (so
deliveries on one link enter the log in the order sent), and gives back the ``Ticket`` to wait
for and the reply to send once it is durable. A task per link sends the replies, oldest first,
as many in one write as are ready (a group commit makes many durable at once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream

from ..errors import WorkflowError
from .log.writer import Ticket
from .peer_link import FrameReader, PeerLinkError, frame, listen_handshake, send_bytes

__all__ = ["PeerServer", "Take"]

logger = logging.getLogger("actorflow.cluster")

#: Handles one request: the ticket to wait for (``None``: nothing to wait for) and the reply.
Take = Callable[[dict[str, Any], bytes], tuple[Ticket | None, dict[str, Any]]]

# Requests of one link waiting for their reply; past it, the link stops reading (the sender
# waits: backpressure, not an unbounded queue).
_WAITING_PER_LINK = 4096


class PeerServer:
    """Listens on ``host:port`` (port 0: any free port) for the schema's other nodes."""

    def __init__(self, host: str, port: int, node_id: str, key: bytes, take: Take) -> None:
        self.host = host
        self.port = port
        self.node_id = node_id
        self._key = key
        self._take = take
        #: Links that failed authentication or broke the protocol (for tests and metrics).
        self.refused = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[str]) -> None:
        """Serve until cancelled; ``task_status.started`` gets the ``host:port`` bound."""
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        async with listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            task_status.started(f"{self.host}:{port}")
            await listener.serve(self._serve_link)

    async def _serve_link(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            reader = FrameReader(stream)
            try:
                peer = await listen_handshake(stream, reader, self._key, self.node_id)
            except PeerLinkError as exc:
                self.refused += 1
                logger.warning("peer link refused: %s", exc)
                return
            sender, waiting = anyio.create_memory_object_stream[
                tuple[int, Ticket | None, dict[str, Any]]
            ](_WAITING_PER_LINK)
            try:
                async with anyio.create_task_group() as tg, sender:
                    tg.start_soon(self._reply, stream, waiting)
                    while True:
                        header, body = await reader.read()
                        request_id = header.get("i")
                        if type(request_id) is not int:
                            raise PeerLinkError(f"peer {peer!r} sent a request without an id")
                        try:
                            ticket, reply = self._take(header, body)
                        except WorkflowError as exc:
                            ticket, reply = None, {"e": "failed", "m": str(exc)}
                        try:
                            sender.send_nowait((request_id, ticket, reply))
                        except anyio.WouldBlock:
                            await sender.send((request_id, ticket, reply))
            except* PeerLinkError as group:
                logger.debug("peer link from %s closed: %s", peer, group.exceptions[0])
            except* Exception as group:  # one link's fault must not stop the listener
                logger.error("peer link from %s failed", peer, exc_info=group.exceptions[0])

    @staticmethod
    async def _reply(
        stream: anyio.abc.ByteSendStream,
        waiting: MemoryObjectReceiveStream[tuple[int, Ticket | None, dict[str, Any]]],
    ) -> None:
        carried: tuple[int, Ticket | None, dict[str, Any]] | None = None
        async with waiting:
            while True:
                if carried is None:
                    try:
                        carried = await waiting.receive()
                    except anyio.EndOfStream:
                        return
                ready, carried = [carried], None
                out = []
                while ready:
                    request_id, ticket, reply = ready.pop()
                    if ticket is not None:
                        try:
                            await ticket.wait()
                        except WorkflowError as exc:  # the log failed: the outcome is unknown
                            reply = {"e": "failed", "m": str(exc)}
                    out.append(frame({"i": request_id, **reply}))
                    # Every reply ready by now goes in the same write (a commit makes many
                    # durable at once); the first not yet durable waits for the next one.
                    try:
                        queued = waiting.receive_nowait()
                    except anyio.WouldBlock:
                        break
                    if queued[1] is None or queued[1].done:
                        ready.append(queued)
                    else:
                        carried = queued
                        break
                await send_bytes(stream, b"".join(out))
