"""Hypercorn's connection handling under an accept loop that bounds the open connections.

Hypercorn's ``worker_serve`` accepts every connection the kernel hands it: ``backlog`` bounds
only the kernel's queue of connections not yet accepted, and ``max_requests`` restarts a worker
after so many requests. Nor can a limit be slipped in around it: on trio it wraps the listening
socket itself and refuses subclasses of :class:`socket.socket`. So :func:`serve_connections` is a
small worker of its own, for asyncio and trio alike: it runs the app's lifespan with Hypercorn's
``Lifespan``, accepts on the listening socket, and hands each connection to Hypercorn's
``TCPServer`` of the running event loop (the classes ``worker_serve`` uses), counting it until
it closes. A connection accepted past ``max_connections`` is answered ``503`` with
``Connection: close`` at once, without waiting for its request, and closed: its file
descriptor is held for an instant, never for the client's convenience.

Shutdown is Hypercorn's: stop accepting, tell idle keep-alive connections to close, give
in-flight requests ``config.graceful_timeout`` seconds, cancel what is left, then end the
lifespan.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import orjson
from hypercorn.config import Config
from hypercorn.typing import AppWrapper, LifespanState

__all__ = ["BUSY_RESPONSE", "default_max_connections", "serve_connections"]

logger = logging.getLogger("actorflow.http")

_BUSY_BODY = orjson.dumps(
    {
        "error": "ServiceUnavailable",
        "message": "the server has as many connections open as it allows; retry later",
    }
)
#: What a connection past the limit receives before it is closed.
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"content-length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)

# accept() failing for lack of descriptors or memory: wait a little and accept again.
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# accept() failing for one connection only (it was reset before being accepted, for example).
_ONE_CONNECTION = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}
_ACCEPT_BATCH = 64


def default_max_connections() -> int:
    """The default bound on open connections: the soft ``RLIMIT_NOFILE`` less a reserve.

    The reserve (an eighth of the limit, at least 128 descriptors) is left for what the runtime
    opens itself: log segments, PostgreSQL connections, the instant a refused connection holds.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 16
    return max(1, soft - max(128, soft // 8))


async def serve_connections(
    app: AppWrapper,
    config: Config,
    sock: socket.socket,
    *,
    max_connections: int,
    trio: bool,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the listening ``sock`` until ``shutdown_trigger()`` returns.

    Reports readiness through ``task_status`` once the app's lifespan has started. ``sock``
    stays the caller's to close.

    Raises:
        hypercorn.utils.LifespanFailureError: the app failed to start.
    """
    state: LifespanState = {}
    if trio:
        from hypercorn.trio.lifespan import Lifespan as TrioLifespan
        from hypercorn.trio.worker_context import WorkerContext as TrioContext

        lifespan: Any = TrioLifespan(app, config, state)
        context: Any = TrioContext(None)
    else:
        import asyncio

        from hypercorn.asyncio.lifespan import Lifespan as AsyncioLifespan
        from hypercorn.asyncio.worker_context import WorkerContext as AsyncioContext

        lifespan = AsyncioLifespan(app, config, asyncio.get_running_loop(), state)
        context = AsyncioContext(None)
    handle = _trio_handler if trio else _asyncio_handler
    open_connections = 0

    async def serve_one(conn: socket.socket) -> None:
        nonlocal open_connections
        try:
            await handle(app, config, context, state, conn)
        except Exception:
            logger.exception("a connection failed")
        finally:
            conn.close()
            open_connections -= 1

    async def accept(connections: anyio.abc.TaskGroup) -> None:
        nonlocal open_connections
        while True:
            await anyio.wait_readable(sock)
            for _ in range(_ACCEPT_BATCH):
                try:
                    conn, _address = sock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _ONE_CONNECTION:
                        continue
                    if exc.errno not in _OUT_OF_RESOURCES:
                        raise
                    logger.error("accept() failed (%s); accepting again in 0.5 s", exc)
                    await anyio.sleep(0.5)
                    break
                if open_connections >= max_connections:
                    _refuse(conn)
                    continue
                open_connections += 1
                conn.setblocking(False)
                connections.start_soon(serve_one, conn)

    async def serving() -> None:
        async with anyio.create_task_group() as connections:
            async with anyio.create_task_group() as accepting:
                accepting.start_soon(accept, connections)
                task_status.started()
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            await context.terminated.set()  # idle keep-alive connections close now
            connections.cancel_scope.deadline = anyio.current_time() + config.graceful_timeout

    if trio:
        # As Hypercorn's trio worker: the lifespan in a nursery around the connections.
        async with anyio.create_task_group() as lifespan_group:
            await lifespan_group.start(_run_lifespan, lifespan)
            await lifespan.wait_for_startup()
            await serving()
            await lifespan.wait_for_shutdown()
            lifespan_group.cancel_scope.cancel()
        return
    import asyncio

    # As Hypercorn's asyncio worker: the lifespan is a task of its own, outside any task group.
    # The app enters its runtime's task group in that task at startup and leaves it at
    # shutdown, so a runtime that fails cancels that task; in a task group around the
    # connections, that would cancel the requests in flight too (answered 500), when they
    # should finish while the server shuts down through its trigger.
    lifespan_task = asyncio.get_running_loop().create_task(lifespan.handle_lifespan())
    try:
        await lifespan.wait_for_startup()
        if lifespan_task.done() and not lifespan_task.cancelled():
            failed = lifespan_task.exception()
            if failed is not None:
                raise failed
        await serving()
        await lifespan.wait_for_shutdown()
    finally:
        lifespan_task.cancel()
        await asyncio.wait([lifespan_task])  # its outcome was reported by the lifespan
        if not lifespan_task.cancelled():
            lifespan_task.exception()


async def _run_lifespan(
    lifespan: Any, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    task_status.started()
    await lifespan.handle_lifespan()


def _refuse(conn: socket.socket) -> None:
    """Answer ``503`` without waiting for anything, and close."""
    try:
        conn.setblocking(False)
        conn.send(BUSY_RESPONSE)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1 << 16)  # what already arrived, so closing does not reset the answer away
    except OSError:
        pass
    finally:
        conn.close()


async def _asyncio_handler(
    app: AppWrapper, config: Config, context: Any, state: LifespanState, conn: socket.socket
) -> None:
    import asyncio

    from hypercorn.asyncio.tcp_server import TCPServer

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=conn)
    try:
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await TCPServer(app, loop, config, context, state, reader, writer)
    finally:
        transport.abort()  # a no-op once closed; otherwise (cancelled) the loop lets go of it


async def _trio_handler(
    app: AppWrapper, config: Config, context: Any, state: LifespanState, conn: socket.socket
) -> None:
    import trio
    from hypercorn.trio.tcp_server import TCPServer

    stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
    try:
        await TCPServer(app, config, context, state, stream).run()  # type: ignore[arg-type]
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
