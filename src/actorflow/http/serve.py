"""Serving an app with Hypercorn: the one place that picks asyncio or trio.

:func:`serve` runs Hypercorn on the event loop it is awaited in (an asyncio app on asyncio, a
``QuartTrio`` app on trio) and reports readiness through ``task_status``, so callers and tests
start it with ``await tg.start(serve, app, ...)``. :func:`run` is the blocking form the
``actorflow serve`` command uses: it starts the event loop of the chosen worker and turns SIGINT
and SIGTERM into a graceful shutdown.

Shutdown order: stop accepting connections, let in-flight requests finish (for at most
``graceful_timeout`` seconds, then cancel them), then the app's lifespan ends, which closes the
runtime: its writer fsyncs everything submitted before the store closes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
import anyio.abc
import orjson
from hypercorn.config import Config
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from hypercorn.utils import wrap_app
from quart import Quart

from ..errors import WorkflowDefinitionError
from .app import EXTENSION, Worker
from .connections import default_max_connections, serve_connections

__all__ = ["bind_socket", "run", "serve", "socket_url"]

logger = logging.getLogger("actorflow.http")

ShutdownTrigger = Callable[[], Awaitable[Any]]


def bind_socket(bind: str, *, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket for ``HOST:PORT`` (``[::1]:PORT`` for IPv6; port ``0`` picks one).

    Raises:
        WorkflowDefinitionError: ``bind`` is malformed or the address cannot be bound.
    """
    host, sep, port_text = bind.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise WorkflowDefinitionError(f"--bind takes HOST:PORT (e.g. 127.0.0.1:8000), not {bind!r}")
    host = host.removeprefix("[").removesuffix("]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, int(port_text)))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise WorkflowDefinitionError(f"cannot listen on {bind}: {exc}") from exc
    return sock


def socket_url(sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _on_trio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


async def serve(
    app: Quart,
    *,
    bind: str | socket.socket = "127.0.0.1:8000",
    shutdown_trigger: ShutdownTrigger | None = None,
    graceful_timeout: float = 10.0,
    read_timeout: float = 10.0,
    keep_alive_timeout: float = 5.0,
    max_connections: int | None = None,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with Hypercorn until ``shutdown_trigger()`` returns; then shut down gracefully.

    Reports ``http://HOST:PORT`` through ``task_status`` once the app's lifespan has started
    (the runtime is running) and the socket accepts connections. A socket passed as ``bind``
    stays the caller's; one bound here is closed on return. Without ``shutdown_trigger`` it
    serves until cancelled.

    Slow and idle clients: a connection must send a complete request head within
    ``keep_alive_timeout`` seconds of opening (or of the previous response), and is closed
    when it sits that long between requests; a request body that stops arriving for
    ``read_timeout`` seconds is answered ``408`` and its connection closed. At most
    ``max_connections`` connections are open at once (default: sized from the process's
    file-descriptor limit, :func:`~actorflow.http.connections.default_max_connections`); one
    more is answered ``503`` and closed at once.

    Raises:
        WorkflowDefinitionError: the app does not match the event loop (a ``QuartTrio`` app
            serves on trio, a ``Quart`` app on asyncio), a limit is not positive, or ``bind``
            cannot be bound.
    """
    trio = _on_trio()
    if _is_trio_app(app) != trio:
        raise WorkflowDefinitionError(
            "this app was made for the "
            f"{'trio' if _is_trio_app(app) else 'asyncio'} worker but is served on "
            f"{'trio' if trio else 'asyncio'}; pass create_app(..., worker=...) the same worker"
        )
    if max_connections is None:
        max_connections = default_max_connections()
    for name, value in (
        ("read_timeout", read_timeout),
        ("keep_alive_timeout", keep_alive_timeout),
        ("max_connections", max_connections),
    ):
        if not value > 0:
            raise WorkflowDefinitionError(f"{name} must be positive, not {value!r}")
    own = not isinstance(bind, socket.socket)
    sock = bind_socket(bind) if isinstance(bind, str) else bind
    try:
        config = Config()
        config.graceful_timeout = graceful_timeout
        config.keep_alive_timeout = keep_alive_timeout
        # Hypercorn's read_timeout would also cut a client that has sent its whole request and
        # waits for the answer (a manual webhook, a delivery routed to another node): bodies
        # are timed in the ASGI layer instead (_time_body_reads), heads by keep_alive_timeout.
        config.read_timeout = None
        # Access logs would print request paths, and a webhook's path holds its token.
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        asgi = wrap_app(_time_body_reads(app, read_timeout), config.wsgi_max_body_size, "asgi")
        wait_for_shutdown = shutdown_trigger or anyio.sleep_forever

        async def trigger() -> None:
            await wait_for_shutdown()
            # Accepting stops now, and what is still running is cancelled after
            # graceful_timeout (Hypercorn answers a cancelled request with its own 500). Have
            # the app answer requests still waiting a little before that, with a 503 to retry.
            margin = min(1.0, graceful_timeout / 4)
            deadline = anyio.current_time() + max(0.0, graceful_timeout - margin)
            for edge in app.extensions.get(EXTENSION, ()):
                edge.drain(deadline)

        async with anyio.create_task_group() as tg:
            await tg.start(
                partial(
                    serve_connections,
                    asgi,
                    config,
                    sock,
                    max_connections=max_connections,
                    trio=trio,
                    shutdown_trigger=trigger,
                )
            )
            task_status.started(socket_url(sock))
    finally:
        if own:
            sock.close()


def _is_trio_app(app: Quart) -> bool:
    try:
        from quart_trio import QuartTrio
    except ImportError:
        return False
    return isinstance(app, QuartTrio)


def _time_body_reads(app: Quart, read_timeout: float) -> Callable[..., Awaitable[None]]:
    """``app``, answering ``408`` when a request body stops arriving for ``read_timeout`` s.

    Only while the body is incomplete: once its last part arrived, the client may wait for the
    answer as long as the app takes. The app is told the client went away (what Hypercorn
    tells it when a connection drops), and the server answers ``408``; the connection then
    closes, since the rest of its body was never read.
    """

    async def asgi(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        body_complete = False
        timed_out = False
        answered = False

        async def timed_receive() -> ASGIReceiveEvent:
            nonlocal body_complete, timed_out
            if body_complete or timed_out:
                return await receive()
            with anyio.move_on_after(read_timeout):
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    body_complete = True
                return message
            timed_out = True
            return {"type": "http.disconnect"}

        async def tracked_send(message: ASGISendEvent) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
            await send(message)

        await app(scope, timed_receive, tracked_send)
        if timed_out and not answered:
            body = orjson.dumps(
                {
                    "error": "RequestTimeout",
                    "message": f"the request body stopped arriving for {read_timeout:g} s",
                }
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 408,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"connection", b"close"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                    "trailers": False,
                }
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})

    return asgi


def run(
    app: Quart,
    *,
    bind: str | socket.socket = "127.0.0.1:8000",
    worker: Worker = "asyncio",
    graceful_timeout: float = 10.0,
    read_timeout: float = 10.0,
    keep_alive_timeout: float = 5.0,
    max_connections: int | None = None,
    on_ready: Callable[[str], None] | None = None,
    fatal: Callable[[], Awaitable[BaseException]] | None = None,
) -> None:
    """Serve ``app`` on a new event loop of ``worker`` until SIGINT or SIGTERM (blocking).

    The first signal shuts down gracefully; a second one stops at once (acknowledged events
    are on disk already; only unacknowledged work is dropped). When ``fatal()`` returns (the
    runtime can no longer work: it lost its lease on a shared store), the server shuts down
    gracefully too, and the error it returned is raised. The timeouts and ``max_connections``
    are :func:`serve`'s.

    Raises:
        WorkflowDefinitionError: see :func:`serve`.
        hypercorn.utils.LifespanFailureError: the app failed to start (the runtime could not
            open its log, for example); the cause is logged.
    """

    failure: list[BaseException] = []

    async def main() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def watch_runtime() -> None:
                assert fatal is not None
                failure.append(await fatal())
                logger.critical("the runtime stopped working, shutting down: %s", failure[0])
                stop.set()

            async def watch_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        if not stop.is_set():
                            logger.info(
                                "%s: finishing in-flight requests (up to %gs), then flushing "
                                "the log; send it again to stop at once",
                                signal.Signals(signum).name,
                                graceful_timeout,
                            )
                            stop.set()
                        else:
                            logger.warning("second signal: stopping now")
                            tg.cancel_scope.cancel()

            async def serving(*, task_status: anyio.abc.TaskStatus[str]) -> None:
                await serve(
                    app,
                    bind=bind,
                    shutdown_trigger=stop.wait,
                    graceful_timeout=graceful_timeout,
                    read_timeout=read_timeout,
                    keep_alive_timeout=keep_alive_timeout,
                    max_connections=max_connections,
                    task_status=task_status,
                )
                tg.cancel_scope.cancel()  # served and shut down: stop watching signals

            tg.start_soon(watch_signals)
            if fatal is not None:
                tg.start_soon(watch_runtime)
            url = await tg.start(serving)
            if on_ready is not None:
                on_ready(url)

    anyio.run(main, backend=worker)
    if failure:
        raise failure[0]
