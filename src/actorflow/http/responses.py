"""JSON responses of the HTTP edge, and the one table that maps errors to status codes.

Every error body is ``{"error": <error class name>, "message": ...}``. actorflow's errors keep
their own names; HTTP-level problems (a body too large, a missing bearer token, a wrong content
type) use Werkzeug's exception names (``RequestEntityTooLarge``, ``Unauthorized``,
``UnsupportedMediaType``...). Anything not in the table is a real fault: ``500``, logged with its
traceback but without the request's token or body.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import orjson
from quart import Response as QuartResponse
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException

from ..errors import (
    HookNotFoundError,
    HookPayloadError,
    IdempotencyKeyConflictError,
    InvalidQueryError,
    OverloadedError,
    PayloadTooLargeError,
    RunExpiredError,
    SerializationError,
    StorageError,
    WebhookSignatureError,
    WorkflowError,
    WorkflowRunNotFoundError,
)
from ..runtime.webhook_request import Response

__all__ = [
    "UNKNOWN_WEBHOOK_BODY",
    "error_response",
    "json_response",
    "problem",
    "status_of",
    "webhook_parts",
]

logger = logging.getLogger("actorflow.http")

#: The body of every ``404`` on the public webhook route: the same bytes for an unknown token, a
#: disposed webhook, an ended run and a plain hook's token, so the route cannot probe tokens.
UNKNOWN_WEBHOOK_BODY = orjson.dumps(
    {
        "error": "HookNotFoundError",
        "message": "no live webhook has this token: it is unknown, was disposed, or its run "
        "has ended",
    }
)

#: actorflow errors a caller can act on, by status. Order matters: subclasses come first.
_STATUS: tuple[tuple[type[WorkflowError], int], ...] = (
    (HookNotFoundError, 404),
    (WorkflowRunNotFoundError, 404),
    (WebhookSignatureError, 401),
    (HookPayloadError, 422),
    (IdempotencyKeyConflictError, 409),
    (PayloadTooLargeError, 413),
    (SerializationError, 400),
    (InvalidQueryError, 400),
    (OverloadedError, 503),
    # The log stopped accepting writes: the server is unavailable, not the request wrong.
    (StorageError, 503),
)

# Headers the server sets itself; a webhook's response must not contradict the real framing.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


def json_response(
    status: int, value: Any, headers: Mapping[str, str] | None = None
) -> QuartResponse:
    """A response with ``value`` as its JSON body."""
    return _raw_json(status, orjson.dumps(value), headers)


def problem(
    status: int, name: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> QuartResponse:
    """An error response ``{"error": name, "message": message, **extra}``."""
    return json_response(status, {"error": name, "message": message, **extra}, headers)


def unknown_webhook() -> QuartResponse:
    """The one ``404`` of the webhook route (see :data:`UNKNOWN_WEBHOOK_BODY`)."""
    return _raw_json(404, UNKNOWN_WEBHOOK_BODY)


def error_response(exc: BaseException, *, where: str) -> QuartResponse:
    """The response for ``exc`` raised while serving ``where`` (a route name, never a token).

    Unexpected exceptions become ``500`` and are logged with their traceback.
    """
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        headers = {"www-authenticate": "Bearer"} if status == 401 else None
        return problem(status, type(exc).__name__, exc.description or exc.name, headers)
    if isinstance(exc, WorkflowError):
        for cls, status in _STATUS:
            if isinstance(exc, cls):
                return _known(exc, status)
    logger.error("%s: internal error while serving the request", where, exc_info=exc)
    return problem(
        500,
        type(exc).__name__ if isinstance(exc, WorkflowError) else "InternalServerError",
        "the server failed to handle this request; it has been logged",
    )


def _known(exc: WorkflowError, status: int) -> QuartResponse:
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if isinstance(exc, OverloadedError):
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after)))
    elif isinstance(exc, StorageError):
        logger.error("the event log stopped accepting writes: %s", exc)
    if isinstance(exc, HookPayloadError):
        extra["problems"] = list(exc.problems)
    if isinstance(exc, RunExpiredError):
        # 404, not 410: an expired run is indistinguishable from an id that never existed once
        # nothing of it is kept; clients that handle 404 need nothing new. The name tells.
        return problem(status, "run_expired", str(exc), headers, run_id=exc.run_id)
    return problem(status, type(exc).__name__, str(exc), headers, **extra)


def webhook_parts(response: Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The status, headers (without ``content-length``) and body sent for a webhook's
    ``af.Response``: its headers as Quart would send them, less the framing the server sets.

    Raises:
        ValueError: a header value holds a newline (Werkzeug's check).
    """
    body = response.body_bytes
    head = [
        (name.lower().encode(), value.encode())
        for name, value in Headers(response.headers).items()
        if name.lower() not in _FRAMING
    ]
    if body and not any(name == b"content-type" for name, _ in head):
        # Quart would label the body text/html; an unlabelled body is just bytes.
        head.append((b"content-type", b"application/octet-stream"))
    return response.status, head, body


def _raw_json(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> QuartResponse:
    out = QuartResponse(body, status=status, content_type="application/json")
    if headers:
        out.headers.update(headers)
    return out


def status_of(exc: BaseException) -> int:
    """The HTTP status the table above gives ``exc`` (``500`` for anything unexpected)."""
    if isinstance(exc, HTTPException):
        return exc.code or 500
    if isinstance(exc, WorkflowError):
        for cls, status in _STATUS:
            if isinstance(exc, cls):
                return status
    return 500
