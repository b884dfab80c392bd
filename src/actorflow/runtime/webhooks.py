"""``resume_webhook``: an HTTP request delivered to a webhook, and the response it gets.

Order of checks, all before anything is written: the token must belong to a live *webhook* (a
plain hook's token is reported exactly like an unknown one, so the public route cannot probe hook
tokens); the signature check must pass; a delivery id seen before returns the stored response
and appends nothing. Then ``hook_received`` is appended and fsynced, and the response is chosen:
``202`` at once, the static response, or for ``"manual"`` the workflow's durable
``webhook_responded`` (``504`` after ``respond_timeout``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import (
    HookNotFoundError,
    IdempotencyKeyConflictError,
    WebhookSignatureError,
    WorkflowDefinitionError,
)
from . import codec
from .core import events as ev
from .core.events import Event
from .webhook_handle import load_verifier
from .webhook_request import Request, Response

if TYPE_CHECKING:
    from .runtime import Runtime
    from .state import HookEntry

__all__ = ["WebhookResponses", "resume_webhook", "to_request"]

ACCEPTED = Response(status=202)
TIMED_OUT_BODY = b'{"error":"WebhookTimeout","message":"the workflow did not respond in time"}'


class WebhookResponses:
    """Manual responses awaited by HTTP callers, keyed by the request's event id."""

    def __init__(self) -> None:
        self._waiters: dict[str, anyio.Event] = {}

    def waiter(self, request_event_id: str) -> anyio.Event:
        found = self._waiters.get(request_event_id)
        if found is None:
            found = self._waiters[request_event_id] = anyio.Event()
        return found

    def renew(self, request_event_id: str) -> anyio.Event:
        """A fresh waiter for a request whose waiter was set (woken; keep waiting)."""
        found = self._waiters[request_event_id] = anyio.Event()
        return found

    def release(self, request_event_id: str) -> None:
        self._waiters.pop(request_event_id, None)

    def poke(self, request_event_id: str) -> None:
        """Wake whoever waits on a request: its response may be committed (another node's)."""
        waiter = self._waiters.get(request_event_id)
        if waiter is not None:
            waiter.set()

    def responded(self, event: Event) -> None:
        waiter = self._waiters.pop(str(event.data.get("request_event_id")), None)
        if waiter is not None:
            waiter.set()


async def to_request(request: Request | Any) -> Request:
    """An ``af.Request`` from itself or from a Quart/Werkzeug request (duck-typed)."""
    if isinstance(request, Request):
        return request
    try:
        data = request.get_data()
        if hasattr(data, "__await__"):
            data = await data
        headers: Mapping[str, str] = request.headers
        return Request(
            method=str(request.method).upper(),
            url=str(request.url),
            headers={k.lower(): v for k, v in headers.items()},
            body=bytes(data),
        )
    except AttributeError as exc:
        raise WorkflowDefinitionError(
            f"resume_webhook() takes an af.Request or a Quart/Werkzeug request, not {request!r}"
        ) from exc


def _delivery_key(request: Request) -> str | None:
    for name in ("idempotency-key", "webhook-id", "x-github-delivery", "x-slack-request-id"):
        value = request.headers.get(name)
        if value:
            return f"{name}:{value}"[:512]
    return None


async def resume_webhook(rt: Runtime, token: str, raw: Request | Any) -> Response:
    """Deliver a request to the webhook owning ``token``; see the module docstring.

    Raises:
        HookNotFoundError: unknown token, disposed webhook, ended run, or a plain hook's token.
        WebhookSignatureError: the signature check failed (nothing committed).
        OverloadedError, LogWriteError, SerializationError: nothing committed.
    """
    if not isinstance(token, str):
        raise HookNotFoundError(str(token))
    request = await to_request(raw)
    live = rt.state.tokens.get(token)
    key = _delivery_key(request)
    cluster = rt.cluster
    if cluster is not None and (live is None or key is not None):
        # A webhook of another node's run, or a delivery id to check across nodes: through
        # the shared inbox, which also answers retries.
        from .cluster import StaleHookError

        for fresh in (False, True):
            entry = live if live is not None else await cluster.lookup(token, fresh=fresh)
            if entry is None and key is not None:
                return await _answer_retry(rt, token, request, key)
            if entry is None or entry.webhook is None:
                raise HookNotFoundError(token)
            _verify(rt, entry, request)
            try:
                return await _deliver_shared(rt, entry, request, key)
            except StaleHookError:
                if fresh:
                    raise
        raise AssertionError("unreachable")
    prior = rt.state.idempotency.get((token, key)) if key is not None else None
    if prior is not None and live is not None and live.hook_id != prior.hook_id:
        prior = None  # the key was spent on an earlier webhook with this token
    # A sender's retry of an accepted delivery is answered even after the webhook is gone.
    entry = prior.hook if prior is not None else live
    if entry is None or entry.webhook is None:
        raise HookNotFoundError(token)
    options = entry.webhook
    _verify(rt, entry, request)
    manual = options.get("respond_with") == "manual"
    if prior is not None:
        await rt.writer.flush()
        if manual:
            return await _manual_response(rt, prior.event_id, float(options["respond_timeout"]))
        return _immediate(options)
    tree = codec.to_tree(request.to_data(), root="request")
    rt.check_size("the webhook request", tree)
    data: dict[str, Any] = {"request": tree, "token": token, "external": True}
    if key is not None:
        data["idempotency_key"] = key
        data["digest"] = _request_digest(request)
    event = await rt.deliver_external(entry, ev.HOOK_RECEIVED, data)
    if not manual:
        return _immediate(options)
    return await _manual_response(rt, event.event_id, float(options["respond_timeout"]))


def _verify(rt: Runtime, entry: HookEntry, request: Request) -> None:
    assert entry.webhook is not None
    spec = entry.webhook.get("verify")
    if spec is None:
        return
    if entry.verifier is None:
        entry.verifier = load_verifier(spec)
    try:
        entry.verifier(request, rt.resolve_secret)
    except (WebhookSignatureError, WorkflowDefinitionError):
        raise
    except Exception as exc:
        raise WebhookSignatureError(f"the webhook's signature check rejected it: {exc}") from exc


async def _deliver_shared(
    rt: Runtime, entry: HookEntry, request: Request, key: str | None
) -> Response:
    assert rt.cluster is not None and entry.webhook is not None
    options = entry.webhook
    tree = codec.to_tree(request.to_data(), root="request")
    rt.check_size("the webhook request", tree)
    data: dict[str, Any] = {"request": tree, "token": entry.token, "external": True}
    if key is not None:
        data["idempotency_key"] = key
        data["digest"] = _request_digest(request)
    rt.writer.check()
    event_id, _ = await rt.cluster.deliver(entry, ev.HOOK_RECEIVED, data)
    if options.get("respond_with") != "manual":
        return _immediate(options)
    return await _manual_response(
        rt, event_id, float(options["respond_timeout"]), run_id=entry.run_id
    )


def _request_digest(request: Request) -> str:
    """What a retried delivery must repeat: its method and body.

    Not the URL or the headers: a sender's retry may reach another process (another host in
    the URL and ``Host``) and carry a fresh signature or timestamp, and is the same delivery.
    """
    return codec.digest(codec.to_tree({"method": request.method, "body": request.body}))


async def _answer_retry(rt: Runtime, token: str, request: Request, key: str) -> Response:
    """A delivery id seen before on a webhook that is gone (on a shared store): the first
    delivery's answer, as a retry gets in one process."""
    assert rt.cluster is not None
    found = await rt.cluster.find_delivery(token, key)
    if found is None or found[2].webhook is None:
        raise HookNotFoundError(token)
    digest, event_id, entry = found
    assert entry.webhook is not None
    _verify(rt, entry, request)
    if digest != _request_digest(request):
        raise IdempotencyKeyConflictError(token, key)
    if entry.webhook.get("respond_with") != "manual":
        return _immediate(entry.webhook)
    return await _manual_response(
        rt, event_id, float(entry.webhook["respond_timeout"]), run_id=entry.run_id
    )


def _immediate(options: Mapping[str, Any]) -> Response:
    if options.get("respond_with") == "static":
        return Response.from_data(codec.from_tree(options["response"]))
    return ACCEPTED


async def _manual_response(
    rt: Runtime, request_event_id: str, timeout: float, *, run_id: str | None = None
) -> Response:
    responses = rt.webhook_responses
    stored = rt.state.responses.get(request_event_id)
    if stored is None or stored.position < 0:
        waiter = responses.waiter(request_event_id)
        try:
            with anyio.move_on_after(timeout):
                if run_id is None or rt.cluster is None:
                    await waiter.wait()
                else:
                    stored = await _remote_response(rt, run_id, request_event_id, waiter)
        finally:
            responses.release(request_event_id)
        if stored is None or stored.position < 0:
            stored = rt.state.responses.get(request_event_id)
        if stored is None:
            return Response(504, TIMED_OUT_BODY, {"content-type": "application/json"})
        if stored.position < 0:  # answered at the deadline, not yet durable: never send early
            await rt.writer.flush()
    return Response.from_data(rt.decode_value(stored, "response"))


async def _remote_response(
    rt: Runtime, run_id: str, request_event_id: str, waiter: anyio.Event
) -> Event | None:
    """Wait for the answer to a request whose run may live on another node.

    Woken by the owner's ``NOTIFY`` (or this node's own append), and polled, so a lost
    notification only delays the answer.
    """
    assert rt.cluster is not None
    while True:
        local = rt.state.responses.get(request_event_id)
        if local is not None and local.position >= 0:
            return local
        found = await rt.cluster.response(run_id, request_event_id)
        if found is not None:
            return found
        with anyio.move_on_after(rt.poll_interval):
            await waiter.wait()
        if waiter.is_set():
            waiter = rt.webhook_responses.renew(request_event_id)
