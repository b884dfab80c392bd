"""The public webhook route: one delivery path, reached two ways.

``WebhookEdge.answer`` turns a delivered request into the response its sender gets. It is
reached through the Quart view (``view``, for the blueprint mounted in a user's own app) and,
in the app :func:`~actorflow.http.app.create_app` builds, through ``asgi``: the route served at
the ASGI layer, ahead of Quart's request context, routing and response objects. A webhook is
the hot public path, and Quart's per-request machinery costs more CPU than the delivery itself
(measured in ``benchmarks/webhook_http.py``); the ASGI path builds the same ``af.Request`` the
view does (headers as Quart presents them, the URL as Werkzeug computes it) and sends the same
status, headers and body, so a sender cannot tell the two apart (one exception: a body that
outgrows the limit as it arrives gets a ``413`` naming the limit, where Quart on asyncio words
it its own way). A request the ASGI path does
not recognise exactly (another method, a mount under a ``root_path``) goes to Quart.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Scope,
)
from quart import Quart, request
from quart import Response as QuartResponse
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout
from werkzeug.sansio.utils import get_current_url, get_host

from ..errors import HookNotFoundError
from ..runtime.runtime import Runtime
from ..runtime.webhook_request import Request, Response
from .responses import error_response, problem, unknown_webhook, webhook_parts

__all__ = ["WEBHOOK_METHODS", "WebhookEdge"]

#: Every method a webhook sender may use; the workflow sees which one it was.
WEBHOOK_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")

ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Coroutine[Any, Any, None]]
Answer = Response | QuartResponse
Head = list[tuple[bytes, bytes]]


class WebhookEdge:
    """The webhook route of one runtime: its views, and the requests waiting for answers."""

    def __init__(self, rt: Runtime, prefix: str, max_body: int) -> None:
        self.rt = rt
        self.max_body = max_body
        self._path = f"{prefix}/webhook"
        # Webhook requests in flight, and when a shutdown cuts them off (see ``drain``).
        self._waiting: set[anyio.CancelScope] = set()
        self._drain_deadline: float | None = None

    def drain(self, deadline: float) -> None:
        """The server is shutting down: answer webhook requests still waiting at ``deadline``
        (a manual webhook's workflow that has not answered) with ``503``, before the server
        cuts them off without an answer."""
        self._drain_deadline = deadline
        for scope in self._waiting:
            scope.deadline = min(scope.deadline, deadline)

    async def answer(self, token: str, delivered: Request) -> Answer:
        """What the sender of ``delivered`` gets: the webhook's response, or a problem.

        Raises: what ``Runtime.resume_webhook`` raises, but ``HookNotFoundError``.
        """
        with anyio.CancelScope() as scope:
            if self._drain_deadline is not None:
                scope.deadline = self._drain_deadline
            self._waiting.add(scope)
            try:
                response = await self.rt.resume_webhook(token, delivered)
            except HookNotFoundError:
                return unknown_webhook()
            finally:
                self._waiting.discard(scope)
        if scope.cancelled_caught:
            return problem(
                503,
                "ServiceUnavailable",
                "the server is shutting down before the workflow answered; retry with the same "
                "delivery id (Idempotency-Key, webhook-id or X-GitHub-Delivery) to get its "
                "answer without delivering the request twice",
                {"retry-after": "1"},
            )
        return response

    # -- through Quart ---------------------------------------------------------------------------

    async def view(self, token: str) -> QuartResponse:
        """The Quart view of ``PREFIX/webhook/<token>``."""
        try:
            body = await self._quart_body()
            headers = {
                k.lower(): ", ".join(request.headers.getlist(k)) for k in request.headers.keys()
            }
            # Quart adds Remote-Addr itself; the workflow gets what the sender sent, nothing else.
            headers.pop("remote-addr", None)
            delivered = Request(
                method=request.method, url=str(request.url), headers=headers, body=body
            )
            answer = await self.answer(token, delivered)
        except Exception as exc:
            return error_response(exc, where="webhook")
        if isinstance(answer, QuartResponse):
            return answer
        try:
            status, head, content = webhook_parts(answer)
        except ValueError as exc:  # a header value Werkzeug refuses: the workflow's, a 500
            return error_response(exc, where="webhook")
        out = QuartResponse(content, status=status)
        del out.headers["content-type"]  # Quart's default; ``head`` has the real one, if any
        for name, value in head:
            out.headers.add(name.decode("latin-1"), value.decode("latin-1"))
        return out

    async def _quart_body(self) -> bytes:
        limit = self.max_body
        declared = request.content_length
        if declared is not None and declared > limit:
            raise RequestEntityTooLarge(f"the body is over the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        # Content-Length can be absent (chunked) or wrong: count what actually arrives.
        async for chunk in request.body:
            size += len(chunk)
            if size > limit:
                raise RequestEntityTooLarge(f"the body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- at the ASGI layer -----------------------------------------------------------------------

    def asgi(self, app: Quart, inner: ASGIApp) -> ASGIApp:
        """``inner`` (the app's ASGI callable) with this route served ahead of it."""
        prefix = self._path
        config = app.config

        async def route(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
            if (
                scope["type"] != "http"
                or not scope["path"].startswith(prefix)
                or scope["method"] not in WEBHOOK_METHODS
                or scope.get("root_path", "")
            ):
                await inner(scope, receive, send)
                return
            rest = scope["path"][len(prefix) :]
            if rest and rest[0] != "/":  # PREFIX/webhooks...: not this route
                await inner(scope, receive, send)
                return
            # PREFIX/webhook and PREFIX/webhook/ are the route without a token: a 404 like a
            # wrong token's.
            token = rest[1:]
            await self._serve(token, scope, receive, send, config)

        return route

    async def _serve(
        self,
        token: str,
        scope: HTTPScope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        config: dict[str, object],
    ) -> None:
        headers, host = _headers(scope, config)
        try:
            body = await self._asgi_body(receive, headers, config)
            if body is None:
                return  # the client went away: nobody to answer
            scheme = scope["scheme"]
            url = get_current_url(
                scheme,
                get_host(scheme, host, scope.get("server")),
                "",
                scope["path"],
                scope["query_string"],
            )
            delivered = Request(method=scope["method"], url=url, headers=headers, body=body)
            answer = await self.answer(token, delivered)
        except Exception as exc:
            answer = error_response(exc, where="webhook")
        if not isinstance(answer, QuartResponse):
            try:
                status, head, content = webhook_parts(answer)
            except ValueError as exc:  # a header value Werkzeug refuses: the workflow's, a 500
                answer = error_response(exc, where="webhook")
        if isinstance(answer, QuartResponse):
            status = answer.status_code
            content = await answer.get_data(as_text=False)
            head = [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in answer.headers.items()
                if name.lower() != "content-length"
            ]
        head.append((b"content-length", str(len(content)).encode()))
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": status,
            "headers": head,
            "trailers": False,
        }
        await send(start)
        end: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": content,
            "more_body": False,
        }
        await send(end)

    async def _asgi_body(
        self, receive: ASGIReceiveCallable, headers: dict[str, str], config: dict[str, object]
    ) -> bytes | None:
        """The body, or ``None`` when the client disconnected before sending all of it.

        Raises:
            RequestEntityTooLarge: over ``max_body``, declared or counted.
            RequestTimeout: it did not arrive within Quart's ``BODY_TIMEOUT``, as in a view.
        """
        limit = self.max_body
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestEntityTooLarge(f"the body is over the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        timeout = config.get("BODY_TIMEOUT")
        with anyio.move_on_after(timeout if isinstance(timeout, int | float) else None) as scope:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return None  # http.disconnect
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise RequestEntityTooLarge(f"the body is over the limit of {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        assert scope.cancelled_caught
        raise RequestTimeout()


def _headers(scope: HTTPScope, config: dict[str, object]) -> tuple[dict[str, str], str | None]:
    """The request's headers as the Quart view presents them to the workflow (names in lower
    case, repeats joined by ``", "``, in the order first seen), and its ``Host``."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        seen = headers.get(name)
        headers[name] = value if seen is None else f"{seen}, {value}"
    headers.pop("remote-addr", None)
    if scope["http_version"] < "1.1" and "host" not in headers:
        # What Quart assumes for an HTTP/1.0 request without Host.
        headers["host"] = str(config.get("SERVER_NAME") or "")
    return headers, headers.get("host")
