"""This node's links to the other nodes of its schema: one per peer, many requests on each.

A link is dialled on the first request to its peer and kept. Requests carry ids; a task per
link writes the frames queued since its last write in one send, and another reads the replies
and hands each to its waiter. A link that fails (refused, broken, or silent past the request
timeout) fails every request waiting on it with :class:`~actorflow.runtime.peer_link.PeerLinkError`
and is not dialled again for ``retry_after`` seconds: meanwhile requests fail at once, and their
callers take the inbox.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from .peer_link import (
    FrameReader,
    PeerLinkError,
    dial_handshake,
    frame,
    send_bytes,
)

__all__ = ["Peers"]

logger = logging.getLogger("actorflow.cluster")

_DIAL_SECONDS = 5.0


@dataclass(eq=False, slots=True)
class _Waiter:
    sent_at: float
    done: anyio.Event = field(default_factory=anyio.Event)
    reply: dict[str, Any] | None = None


@dataclass(eq=False, slots=True)
class _Link:
    address: str
    ready: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    error: str | None = None
    closed_at: float | None = None
    waiting: dict[int, _Waiter] = field(default_factory=dict)
    outbox: list[bytes] = field(default_factory=list)
    wake: anyio.Event = field(default_factory=anyio.Event)
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def close(self, error: str) -> None:
        if self.closed_at is None:
            self.error = error
            self.closed_at = anyio.current_time()
        self.scope.cancel()
        self.ready.set()
        for waiter in self.waiting.values():
            waiter.done.set()


class Peers:
    """Links to the other nodes, dialled on demand; run ``run`` in the owner's task group."""

    def __init__(
        self, node_id: str, key: bytes, *, timeout: float, retry_after: float = 1.0
    ) -> None:
        self.node_id = node_id
        self._key = key
        self.timeout = timeout
        self.retry_after = retry_after
        self._links: dict[str, _Link] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None
                for link in self._links.values():
                    link.close("this node is stopping")

    async def request(
        self, peer: str, address: str, header: dict[str, Any], body: bytes
    ) -> dict[str, Any]:
        """Send a request to node ``peer`` at ``address``; its reply.

        Raises:
            PeerLinkError: no link to the peer, or it failed before the reply (the request may
                or may not have been handled: the caller must be able to tell).
        """
        link = self._link(peer, address)
        if not link.ready.is_set():
            await link.ready.wait()
        if link.closed_at is not None:
            raise PeerLinkError(f"no link to node {peer}: {link.error}")
        request_id = next(link.ids)
        waiter = link.waiting[request_id] = _Waiter(anyio.current_time())
        link.outbox.append(frame({**header, "i": request_id}, body))
        link.wake.set()
        try:
            await waiter.done.wait()  # a reply, or the link closed (``_watch`` bounds the wait)
        finally:
            link.waiting.pop(request_id, None)
        if waiter.reply is None:
            raise PeerLinkError(f"the link to node {peer} failed: {link.error}")
        return waiter.reply

    def _link(self, peer: str, address: str) -> _Link:
        link = self._links.get(peer)
        if link is not None and (link.closed_at is None or (
            link.address == address
            and anyio.current_time() - link.closed_at < self.retry_after
        )):  # fmt: skip
            return link
        now = anyio.current_time()
        for gone in [p for p, k in self._links.items() if k.closed_at and now - k.closed_at > 60]:
            del self._links[gone]  # nodes that left (a restarted process is a new node)
        link = self._links[peer] = _Link(address)
        if self._tg is None:
            link.close("this node is not running")
        else:
            self._tg.start_soon(self._keep, peer, link)
        return link

    async def _keep(self, peer: str, link: _Link) -> None:
        error = "closed"
        try:
            with link.scope:
                host, _, port = link.address.rpartition(":")
                with anyio.fail_after(_DIAL_SECONDS):
                    stream = await anyio.connect_tcp(host, int(port))
                async with stream:
                    reader = FrameReader(stream)
                    with anyio.fail_after(_DIAL_SECONDS):
                        await dial_handshake(stream, reader, self._key, self.node_id, peer)
                    link.ready.set()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._write, stream, link)
                        tg.start_soon(self._watch, link)
                        while True:
                            header, _ = await reader.read()
                            waiter = link.waiting.get(header.get("i"))  # type: ignore[arg-type]
                            if waiter is not None:
                                waiter.reply = header
                                waiter.done.set()
        except* (PeerLinkError, OSError, TimeoutError) as group:
            error = str(group.exceptions[0])
            logger.info("link to node %s (%s) failed: %s", peer, link.address, error)
        except* Exception as group:  # a bad address or reply: this link fails, not the node
            error = repr(group.exceptions[0])
            logger.error("link to node %s (%s) failed", peer, link.address,
                         exc_info=group.exceptions[0])  # fmt: skip
        finally:
            link.close(error)

    async def _watch(self, link: _Link) -> None:
        """Close the link when a request waits past the timeout: a paused or stuck peer (later
        requests dial afresh)."""
        while True:
            await anyio.sleep(self.timeout / 4)
            oldest = next(iter(link.waiting.values()), None)  # requests wait in id order
            if oldest is not None and anyio.current_time() - oldest.sent_at > self.timeout:
                raise PeerLinkError(f"no reply within {self.timeout:g} s")

    @staticmethod
    async def _write(stream: anyio.abc.ByteSendStream, link: _Link) -> None:
        while True:
            await link.wake.wait()
            # Let the requests made in this turn of the event loop join the same write.
            await anyio.lowlevel.checkpoint()
            link.wake = anyio.Event()
            data = b"".join(link.outbox)
            link.outbox.clear()
            await send_bytes(stream, data)
