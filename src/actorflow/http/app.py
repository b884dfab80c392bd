"""The Quart app of SPEC section 7: the public webhook route, the resume, hook and run routes,
``/healthz`` and an OpenAPI document; also as a blueprint to mount in a user's own Quart app.

Routes (``PREFIX`` is ``/.well-known/workflow/v1``)::

    any method  PREFIX/webhook/<token>       public: resume_webhook
    POST        PREFIX/hooks/resume          bearer: resume_hook
    GET         PREFIX/hooks/<token>         bearer: get_hook_by_token
    POST        PREFIX/runs                  bearer: start
    GET         PREFIX/runs/<run_id>         bearer: status, result or error, live hooks
    POST        PREFIX/runs/<run_id>/cancel  bearer: cancel
    GET         PREFIX/runs, PREFIX/hooks, PREFIX/runs/<run_id>/events   bearer: listings
                                             (``inspect_routes.py``)
    POST        PREFIX/runs/retry-parked     bearer: retry parked runs (``deploy_routes.py``)
    GET         PREFIX/runs/<run_id>/streams/<namespace>  bearer: the stream as SSE
    POST        PREFIX/runs/<run_id>/wake-up bearer: fire pending sleeps now
    GET         PREFIX/openapi.json          the routes as OpenAPI 3.0
    GET         /healthz                     liveness and log-writer health
    GET         /metrics                     Prometheus metrics (open, like /healthz)
    GET, POST   PREFIX/ui/...                the web inspector (``inspector/``): pages behind
                                             a sign-in with the resume secret

The bearer routes exist only when a resume secret is set; without one they are ``404`` like any
unknown path. Tokens and bodies are never logged: a token is a credential.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, Literal, ParamSpec

import anyio
import orjson
from quart import Blueprint, Quart, request
from quart import Response as QuartResponse
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    RequestEntityTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from werkzeug.routing import PathConverter

from ..errors import WorkflowDefinitionError
from ..runtime import codec
from ..runtime.runtime import Runtime
from . import run_streams
from .deploy_routes import add_deploy_routes
from .inspect_routes import add_inspect_routes
from .inspector import add_inspector
from .metrics import add_metrics_route
from .openapi import openapi_document
from .responses import error_response, json_response, problem
from .webhook_route import WEBHOOK_METHODS, WebhookEdge

__all__ = [
    "EXTENSION",
    "MiB",
    "PREFIX",
    "WEBHOOK_METHODS",
    "Worker",
    "create_app",
    "create_blueprint",
]

logger = logging.getLogger("actorflow.http")

MiB = 1024 * 1024
PREFIX = "/.well-known/workflow/v1"
Worker = Literal["asyncio", "trio"]
#: ``app.extensions`` key listing the route sets :func:`~actorflow.http.serve.serve` drains.
EXTENSION = "actorflow_edges"
P = ParamSpec("P")


def create_app(
    runtime: Runtime,
    *,
    resume_secret: str | None = None,
    base_url: str | None = None,
    max_body: int = MiB,
    worker: Worker = "asyncio",
    manage_runtime: bool = True,
) -> Quart:
    """The Quart app serving ``runtime`` (a ``QuartTrio`` app when ``worker="trio"``).

    ``base_url`` is the public URL webhooks are reached at (it becomes ``runtime.base_url``, so
    ``webhook.url`` works). With ``manage_runtime`` the app starts the runtime when serving
    starts and closes it (flushing the log) when serving stops; pass ``False`` when you run the
    runtime yourself (``async with Runtime(...)``).

    Raises:
        WorkflowDefinitionError: ``max_body`` is not positive, ``worker`` is unknown, or
            ``worker="trio"`` without quart-trio installed.
    """
    app_class = _app_class(worker)
    if base_url:
        runtime.base_url = base_url.rstrip("/")
    app: Quart = app_class("actorflow")
    # Quart buffers request bodies itself; stop it buffering past our own limit.
    app.config["MAX_CONTENT_LENGTH"] = _check_max_body(max_body)
    blueprint, edge = _blueprint(
        runtime,
        resume_secret=resume_secret,
        max_body=max_body,
        manage_runtime=manage_runtime,
        name="actorflow",
    )
    app.register_blueprint(blueprint)
    # The public webhook route, served ahead of Quart's request handling (``webhook_route``).
    app.asgi_app = edge.webhooks.asgi(app, app.asgi_app)  # type: ignore[method-assign,assignment]

    async def http_error(exc: HTTPException) -> QuartResponse:
        out = error_response(exc, where="routing")
        valid = getattr(exc, "valid_methods", None)
        if valid:
            out.headers["allow"] = ", ".join(valid)
        return out

    app.register_error_handler(HTTPException, http_error)
    return app


def _register_token_converter(state: Any) -> None:
    state.app.url_map.converters.setdefault("token", TokenConverter)


class TokenConverter(PathConverter):
    """A token as it was chosen: any characters, slashes included, even a leading one.

    Werkzeug's ``path`` refuses a leading slash, so ``/webhook/%2Fx`` would miss the route and
    get a generic 404 instead of the one the route gives for every unknown token.
    """

    regex = ".+?"
    part_isolating = False  # it spans "/" (Werkzeug would infer True from the regex)


def create_blueprint(
    runtime: Runtime,
    *,
    resume_secret: str | None = None,
    max_body: int = MiB,
    manage_runtime: bool = True,
    name: str = "actorflow",
) -> Blueprint:
    """The routes as a blueprint, for ``app.register_blueprint`` in your own Quart app.

    The routes are absolute (``/.well-known/workflow/v1/...`` and ``/healthz``). See
    :func:`create_app` for ``manage_runtime``.

    Raises:
        WorkflowDefinitionError: ``max_body`` is not positive or ``resume_secret`` is empty.
    """
    blueprint, _ = _blueprint(
        runtime,
        resume_secret=resume_secret,
        max_body=max_body,
        manage_runtime=manage_runtime,
        name=name,
    )
    return blueprint


def _blueprint(
    runtime: Runtime,
    *,
    resume_secret: str | None,
    max_body: int,
    manage_runtime: bool,
    name: str,
) -> tuple[Blueprint, _Edge]:
    if resume_secret is not None and not resume_secret:
        raise WorkflowDefinitionError(
            "resume_secret is empty; pass None to disable the resume routes, or a long random "
            "secret"
        )
    edge = _Edge(runtime, resume_secret, _check_max_body(max_body))
    bp = Blueprint(name, __name__)
    bp.record_once(lambda state: state.app.extensions.setdefault(EXTENSION, []).append(edge))
    # Registered before the rules below use it (deferred functions run in order).
    bp.record_once(_register_token_converter)
    bp.add_url_rule(
        f"{PREFIX}/webhook/<token:token>",
        "webhook",
        edge.webhooks.view,
        methods=list(WEBHOOK_METHODS),
        provide_automatic_options=False,
        # A token may start with or contain "//": merging slashes would redirect (308) the
        # request to another token.
        merge_slashes=False,
    )
    for bare in (f"{PREFIX}/webhook", f"{PREFIX}/webhook/"):
        # No token at all: the same 404 as a wrong one, for every method.
        bp.add_url_rule(
            bare,
            "webhook_without_token" + bare[-1],
            edge.webhooks.view,
            defaults={"token": ""},
            methods=list(WEBHOOK_METHODS),
            provide_automatic_options=False,
            strict_slashes=False,
        )
    bp.add_url_rule("/healthz", "healthz", edge.healthz, methods=["GET"])
    bp.add_url_rule(f"{PREFIX}/openapi.json", "openapi", edge.openapi, methods=["GET"])
    add_metrics_route(bp, runtime)
    if resume_secret is not None:
        bp.add_url_rule(f"{PREFIX}/hooks/resume", "resume_hook", edge.resume, methods=["POST"])
        bp.add_url_rule(
            f"{PREFIX}/hooks/<token:token>",
            "get_hook",
            edge.get_hook,
            methods=["GET"],
            merge_slashes=False,
        )
        bp.add_url_rule(f"{PREFIX}/runs", "start_run", edge.start_run, methods=["POST"])
        bp.add_url_rule(f"{PREFIX}/runs/<run_id>", "get_run", edge.get_run, methods=["GET"])
        bp.add_url_rule(
            f"{PREFIX}/runs/<run_id>/cancel", "cancel_run", edge.cancel_run, methods=["POST"]
        )
        add_inspect_routes(bp, PREFIX, runtime, edge.authorize)
        add_inspector(bp, PREFIX, runtime, resume_secret)
        add_deploy_routes(bp, PREFIX, runtime, edge.authorize)
        run_streams.register(bp, edge, PREFIX)
    if manage_runtime:

        async def start_runtime() -> None:
            await runtime.__aenter__()
            logger.info("actorflow runtime started on %s", runtime.data_dir)

        async def stop_runtime() -> None:
            # Hypercorn calls this after in-flight requests finished: the writer drains and
            # fsyncs what was submitted before the store closes.
            await runtime.__aexit__(None, None, None)
            logger.info("actorflow runtime stopped; the log is flushed")

        bp.before_app_serving(start_runtime)
        bp.after_app_serving(stop_runtime)
    return bp, edge


def _app_class(worker: str) -> type[Quart]:
    if worker == "asyncio":
        return Quart
    if worker == "trio":
        try:
            from quart_trio import QuartTrio
        except ImportError as exc:
            raise WorkflowDefinitionError(
                "the trio worker needs quart-trio: pip install 'actorflow[trio]'"
            ) from exc
        return QuartTrio
    raise WorkflowDefinitionError(f'worker must be "asyncio" or "trio", not {worker!r}')


def _check_max_body(max_body: int) -> int:
    if not isinstance(max_body, int) or max_body <= 0:
        raise WorkflowDefinitionError(
            f"max_body must be a positive number of bytes, not {max_body!r}"
        )
    return max_body


def _guarded(
    where: str,
) -> Callable[[Callable[P, Awaitable[QuartResponse]]], Callable[P, Awaitable[QuartResponse]]]:
    """Turn every exception a view raises into its JSON response (cancellation passes)."""

    def wrap(view: Callable[P, Awaitable[QuartResponse]]) -> Callable[P, Awaitable[QuartResponse]]:
        @wraps(view)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> QuartResponse:
            try:
                return await view(*args, **kwargs)
            except Exception as exc:
                return error_response(exc, where=where)

        return guarded

    return wrap


class _Edge:
    """The views, bound to one runtime."""

    def __init__(self, rt: Runtime, resume_secret: str | None, max_body: int) -> None:
        self.rt = rt
        self._secret = resume_secret.encode("utf-8") if resume_secret is not None else None
        self.max_body = max_body
        self._openapi = orjson.dumps(openapi_document(resume_routes=resume_secret is not None))
        self.webhooks = WebhookEdge(rt, PREFIX, max_body)
        # Stream requests in flight (``run_streams``), and when a shutdown cuts them off.
        self._waiting: set[anyio.CancelScope] = set()
        self._drain_deadline: float | None = None

    def drain(self, deadline: float) -> None:
        """The server is shutting down: answer webhook requests still waiting at ``deadline``
        (a manual webhook's workflow that has not answered) with ``503``, before the server
        cuts them off without an answer."""
        self._drain_deadline = deadline
        for scope in self._waiting:
            scope.deadline = min(scope.deadline, deadline)
        self.webhooks.drain(deadline)

    # -- public ------------------------------------------------------------------------------

    async def healthz(self) -> QuartResponse:
        health = self.rt.health()
        if not health.started:
            return problem(503, "ServiceUnavailable", "the runtime has not started yet")
        if health.failure is not None:
            return problem(
                503,
                "LogWriteError",
                f"the event log failed and accepts nothing more: {health.failure}; restart the "
                "server to recover from what is on disk",
            )
        return json_response(200, {"status": "ok", "log_backlog": health.backlog,
                                   "retention": self.rt.retention_status().to_json()})  # fmt: skip

    async def openapi(self) -> QuartResponse:
        return QuartResponse(self._openapi, status=200, content_type="application/json")

    # -- bearer ------------------------------------------------------------------------------

    @_guarded("resume_hook")
    async def resume(self) -> QuartResponse:
        self._authorize()
        data = await self._read_json(required=True)
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise BadRequest('"token" must be a non-empty string')
        if "payload" not in data:
            raise BadRequest('"payload" is missing (send null for no payload)')
        key = data.get("idempotency_key")
        if key is not None and (not isinstance(key, str) or not key):
            raise BadRequest('"idempotency_key" must be a non-empty string when given')
        hook = await self.rt.resume_hook(token, data["payload"], idempotency_key=key)
        return json_response(200, _hook_json(hook.to_json()))

    @_guarded("get_hook")
    async def get_hook(self, token: str) -> QuartResponse:
        self._authorize()
        hook = await self.rt.get_hook_by_token(token)
        return json_response(200, _hook_json(hook.to_json()))

    @_guarded("start_run")
    async def start_run(self) -> QuartResponse:
        self._authorize()
        data = await self._read_json(required=True)
        name = data.get("workflow")
        args = data.get("args", [])
        kwargs = data.get("kwargs", {})
        if not isinstance(name, str) or not name:
            raise BadRequest('"workflow" must be the name of a registered workflow')
        if not isinstance(args, list):
            raise BadRequest('"args" must be a list')
        if not isinstance(kwargs, dict):
            raise BadRequest('"kwargs" must be an object')
        if name not in self.rt.workflows:
            # An unknown name is a mistake in the request, not a missing resource: 400.
            return problem(
                400,
                "WorkflowDefinitionError",
                f"no workflow named {name!r} is registered; known: "
                f"{', '.join(sorted(self.rt.workflows)) or 'none'}",
            )
        key = request.headers.get("idempotency-key")
        try:
            if key:
                # A sender retrying a start it got no answer to gets the first run back.
                run = await self.rt.start_once(key[:512], name, *args, **kwargs)
            else:
                run = await self.rt.start(name, *args, **kwargs)
        except WorkflowDefinitionError as exc:
            # Arguments that do not fit the workflow: the request's mistake, nothing committed.
            return problem(400, "WorkflowDefinitionError", str(exc))
        return json_response(
            201, {"run_id": run.run_id}, {"location": f"{PREFIX}/runs/{run.run_id}"}
        )

    @_guarded("get_run")
    async def get_run(self, run_id: str) -> QuartResponse:
        self._authorize()
        return json_response(200, await self._describe_run(run_id))

    @_guarded("cancel_run")
    async def cancel_run(self, run_id: str) -> QuartResponse:
        self._authorize()
        data = await self._read_json(required=False)
        reason = data.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise BadRequest('"reason" must be a string when given')
        await self.rt.cancel_run(run_id, reason)
        return json_response(200, await self._describe_run(run_id))

    # -- helpers -----------------------------------------------------------------------------

    def authorize(self) -> None:
        """Refuse the request (``401``) unless it carries the resume secret."""
        self._authorize()

    def _authorize(self) -> None:
        assert self._secret is not None  # the routes exist only with a secret
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest on bytes: constant time in the secret's length, and any input allowed.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8"), self._secret
        ):
            raise Unauthorized("send Authorization: Bearer <resume secret>")

    async def _read_body(self) -> bytes:
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

    async def _read_json(self, *, required: bool) -> dict[str, Any]:
        body = await self._read_body()
        if not body and not required:
            return {}
        if not request.mimetype or not (
            request.mimetype == "application/json" or request.mimetype.endswith("+json")
        ):
            raise UnsupportedMediaType("send the body as application/json")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
        return data

    async def _describe_run(self, run_id: str) -> dict[str, Any]:
        run = self.rt.get_run(run_id)
        # One reading of the run for its status, times and waits (the query API's RunInfo):
        # a status read apart from them could say "completed" beside a run still waiting.
        info = await run.info()
        status = info.status
        # The hooks listed below (webhook URLs) must be on disk before anyone can see them.
        state, live_hooks = await self.rt.front.live_hooks(run_id)
        out: dict[str, Any] = {
            "run_id": run_id,
            "workflow": state.workflow_name,
            "status": status,
        }
        if status == "completed":
            out["result"] = codec.to_tree(await run.result(), root="result")
        elif status in ("failed", "cancelled"):
            try:
                await run.result()
            except Exception as exc:
                cause = getattr(exc, "cause", exc)
                out["error"] = {"type": type(cause).__name__, "message": str(cause)}
        hooks = []
        for entry in live_hooks:
            token = entry.token
            hook: dict[str, Any] = {
                "hook_id": entry.hook_id,
                "token": token,
                "is_webhook": entry.webhook is not None,
            }
            if entry.webhook is not None and self.rt.base_url:
                hook["url"] = f"{self.rt.base_url}{PREFIX}/webhook/{token}"
            hooks.append(hook)
        out["hooks"] = hooks
        out.update(info.to_json())
        return out


def _hook_json(hook: dict[str, Any]) -> dict[str, Any]:
    # Metadata is a user value: plain JSON stays as it is, anything else in its codec form.
    hook["metadata"] = codec.to_tree(hook["metadata"], root="metadata")
    return hook
