"""``resume_webhook``: an HTTP request delivered to a webhook, and the response it gets.

Order of checks, all before anything is written: the token must belong to a live *webhook* (a
plain hook's token is reported exactly like an unknown one, so the public route cannot probe hook
tokens); the signature check must pass; a delivery id seen before returns the stored response
and appends nothing. Then ``hook_received`` is appended and fsynced, and the response is chosen:
``202`` at once, the static response, or for ``"manual"`` the workflow's durable
``webhook_responded`` (``504`` after ``respond_timeout``).

Where the webhook's run is owned (this process or another) is ``Ownership``'s business: this
module has one path for both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio

from ..errors import (
    HookNotFoundError,
    IdempotencyKeyConflictError,
    WebhookSignatureError,
    WorkflowDefinitionError,
)
from . import codec
from .core import events as ev
from .journal import Journal
from .limits import Limits
from .ownership import Ownership, StaleHookError
from .payloads import Payloads
from .response_waiters import WebhookResponses
from .state import HookEntry, State
from .webhook_handle import load_verifier
from .webhook_request import Request, Response

__all__ = ["Webhooks", "to_request"]

ACCEPTED = Response(status=202)
TIMED_OUT_BODY = b'{"error":"WebhookTimeout","message":"the workflow did not respond in time"}'


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


class Webhooks:
    """Delivers HTTP requests to webhooks and finds the responses their callers get."""

    def __init__(
        self,
        state: State,
        journal: Journal,
        ownership: Ownership,
        payloads: Payloads,
        limits: Limits,
        responses: WebhookResponses,
        resolve_secret: Callable[[str], bytes],
    ) -> None:
        self._state = state
        self._journal = journal
        self._ownership = ownership
        self._payloads = payloads
        self._limits = limits
        self._responses = responses
        self._resolve_secret = resolve_secret

    async def resume(self, token: str, raw: Request | Any) -> Response:
        """Deliver a request to the webhook owning ``token``; see the module docstring.

        Raises:
            HookNotFoundError: unknown token, disposed webhook, ended run, or a plain hook's token.
            WebhookSignatureError: the signature check failed (nothing committed).
            OverloadedError, LogWriteError, SerializationError: nothing committed.
        """
        if not isinstance(token, str):
            raise HookNotFoundError(str(token))
        request = await to_request(raw)
        key = _delivery_key(request)
        for fresh in (False, True):
            live = None if fresh else self._state.tokens.get(token)
            if live is None:
                live = await self._ownership.lookup(token, fresh=fresh)
            prior = (
                await self._ownership.prior_delivery(token, key, live) if key is not None else None
            )
            # A sender's retry of an accepted delivery is answered even after the webhook is gone.
            entry = prior.hook if prior is not None else live
            if entry is None or entry.webhook is None:
                raise HookNotFoundError(token)
            options = entry.webhook
            self._verify(entry, request)
            manual = options.get("respond_with") == "manual"
            timeout = float(options.get("respond_timeout", 30.0))
            if prior is not None:
                if prior.digest != _request_digest(request):
                    raise IdempotencyKeyConflictError(token, str(key))
                await self._journal.flush()
                if manual:
                    return await self._manual_response(entry.run_id, prior.event_id, timeout)
                return _immediate(options)
            assert live is not None
            tree = codec.to_tree(request.to_data(), root="request")
            encoded = {"request": self._limits.check_size("the webhook request", tree)}
            data: dict[str, Any] = {"request": tree, "token": token, "external": True}
            if key is not None:
                data["idempotency_key"] = key
                data["digest"] = _request_digest(request)
            try:
                event_id = await self._ownership.deliver(live, ev.HOOK_RECEIVED, data, None,
                                                         encoded)  # fmt: skip
            except StaleHookError:
                if fresh:
                    raise
                continue
            if not manual:
                return _immediate(options)
            return await self._manual_response(live.run_id, event_id, timeout)
        raise AssertionError("unreachable")

    def _verify(self, entry: HookEntry, request: Request) -> None:
        assert entry.webhook is not None
        spec = entry.webhook.get("verify")
        if spec is None:
            return
        if entry.verifier is None:
            entry.verifier = load_verifier(spec)
        try:
            entry.verifier(request, self._resolve_secret)
        except (WebhookSignatureError, WorkflowDefinitionError):
            raise
        except Exception as exc:
            raise WebhookSignatureError(
                f"the webhook's signature check rejected it: {exc}"
            ) from exc

    async def _manual_response(
        self, run_id: str, request_event_id: str, timeout: float
    ) -> Response:
        state = self._state
        journal = self._journal
        stored = state.responses.get(request_event_id)
        if not journal.is_durable(stored):
            responses = self._responses
            waiter = responses.waiter(request_event_id)
            try:
                with anyio.move_on_after(timeout):
                    found = await self._ownership.wait_response(run_id, request_event_id, waiter)
                    if found is not None:
                        stored = found
            finally:
                responses.release(request_event_id)
            if not journal.is_durable(stored):
                stored = state.responses.get(request_event_id)
            if stored is None:
                return Response(504, TIMED_OUT_BODY, {"content-type": "application/json"})
            # Answered at the deadline, not yet durable: never send early.
            await journal.settle(stored)
        assert stored is not None
        return Response.from_data(
            codec.from_tree(self._payloads.value(stored, stored.data.get("response")))
        )


def _request_digest(request: Request) -> str:
    """What a retried delivery must repeat: its method and body.

    Not the URL or the headers: a sender's retry may reach another process (another host in
    the URL and ``Host``) and carry a fresh signature or timestamp, and is the same delivery.
    """
    return codec.digest(codec.to_tree({"method": request.method, "body": request.body}))


def _immediate(options: Mapping[str, Any]) -> Response:
    if options.get("respond_with") == "static":
        return Response.from_data(codec.from_tree(options["response"]))
    return ACCEPTED
