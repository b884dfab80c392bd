"""The inspector's pages and actions, server-rendered from the runtime's Python API.

Routes (``UI`` is ``/.well-known/workflow/v1/ui``)::

    GET   UI/                       runs, newest first: ?status=&workflow=&limit=&cursor=
    GET   UI/runs/<run_id>          one run: status, input, result or error, hooks, sleeps,
                                    steps, and its timeline (?after= pages through it)
    POST  UI/runs/<run_id>/resume   resume one of its hooks with a JSON payload (form)
    POST  UI/runs/<run_id>/cancel   cancel it (form)
    GET   UI/hooks                  live hooks of every run: ?cursor=
    GET   UI/login, POST UI/login   sign in with the resume secret; POST UI/logout
    GET   UI/static/inspector.css   the one stylesheet (no script at all)

Every page but the sign-in needs a session (see ``session.py``); every POST but the sign-in
needs the session's CSRF token. Pages are never cached (they show tokens) and forbid framing,
scripts and other origins through a Content-Security-Policy.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import wraps
from importlib import resources
from typing import Any, ParamSpec
from urllib.parse import urlsplit

import jinja2
import orjson
from quart import Blueprint, request
from quart import Response as QuartResponse

from ...errors import (
    InvalidQueryError,
    WorkflowError,
    WorkflowRunCancelledError,
    WorkflowRunFailedError,
)
from ...runtime import codec
from ...runtime.query import MAX_LIMIT, STATUSES
from ...runtime.runtime import Runtime
from ..responses import status_of
from .display import ago, iso, path_part, pretty_json, query_string
from .session import Sessions

__all__ = ["COOKIE", "add_inspector"]

logger = logging.getLogger("actorflow.http")

#: The session cookie's name.
COOKIE = "actorflow_inspector"
PAGE_SIZE = 25
TIMELINE_PAGE = 100
#: Fixed messages shown after an action (the query string names one; it never carries text).
NOTICES = {
    "resumed": "Payload delivered: it is on disk, and the run carries on from there.",
    "cancelled": "Run cancelled.",
}
_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # Not "no-referrer": with it, chromium sends "Origin: null" on the pages' own forms.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
P = ParamSpec("P")


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("actorflow.http.inspector", "templates"),
        autoescape=True,  # every value, in every template: payloads are user input
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(iso=iso, json=pretty_json, path=path_part)
    return env


def add_inspector(bp: Blueprint, prefix: str, rt: Runtime, resume_secret: str) -> None:
    """Serve the inspector under ``prefix + "/ui"`` (only ever with a resume secret)."""
    ui = f"{prefix}/ui"
    pages = _Inspector(rt, Sessions(resume_secret), ui, prefix)
    bp.add_url_rule(f"{ui}/", "ui_runs", pages.runs, methods=["GET"])
    bp.add_url_rule(ui, "ui_root", pages.root, methods=["GET"])
    bp.add_url_rule(f"{ui}/runs/<run_id>", "ui_run", pages.run, methods=["GET"])
    bp.add_url_rule(f"{ui}/runs/<run_id>/resume", "ui_resume", pages.resume, methods=["POST"])
    bp.add_url_rule(f"{ui}/runs/<run_id>/cancel", "ui_cancel", pages.cancel, methods=["POST"])
    bp.add_url_rule(f"{ui}/hooks", "ui_hooks", pages.hooks, methods=["GET"])
    bp.add_url_rule(f"{ui}/login", "ui_login", pages.login, methods=["GET", "POST"])
    bp.add_url_rule(f"{ui}/logout", "ui_logout", pages.logout, methods=["POST"])
    bp.add_url_rule(f"{ui}/static/inspector.css", "ui_css", pages.stylesheet, methods=["GET"])


def _guarded(
    view: Callable[P, Awaitable[QuartResponse]],
) -> Callable[P, Awaitable[QuartResponse]]:
    """Turn an exception into an HTML error page (cancellation passes)."""

    @wraps(view)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> QuartResponse:
        self = args[0]
        assert isinstance(self, _Inspector)
        try:
            return await view(*args, **kwargs)
        except Exception as exc:
            return self.problem_page(exc)

    return guarded


class _Inspector:
    def __init__(self, rt: Runtime, sessions: Sessions, ui: str, prefix: str) -> None:
        self.rt = rt
        self.sessions = sessions
        self.ui = ui
        self.prefix = prefix
        self.env = _templates()
        self.css = resources.files(__package__).joinpath("static/inspector.css").read_bytes()

    # -- pages -------------------------------------------------------------------------------

    async def root(self) -> QuartResponse:
        return self.redirect(f"{self.ui}/")

    @_guarded
    async def runs(self) -> QuartResponse:
        if (signed_out := self.require_session()) is not None:
            return signed_out
        args = request.args
        status, workflow = args.get("status") or None, args.get("workflow") or None
        cursor = args.get("cursor") or None
        # Text from the URL: list_runs checks it (and says what is wrong with it).
        limit: Any = args.get("limit") or PAGE_SIZE
        problem, code, page = None, 200, None
        try:
            page = await self.rt.list_runs(
                status=status, workflow=workflow, limit=limit, cursor=cursor
            )
        except InvalidQueryError as exc:
            problem, code = str(exc), 400
        explicit_limit = args.get("limit") or None
        return self.render(
            "runs.html",
            code,
            runs=page.items if page else (),
            problem=problem,
            status=status or "",
            workflow=workflow or "",
            statuses=STATUSES,
            workflows=sorted({*self.rt.workflows, *([workflow] if workflow else [])}),
            next_page=(
                query_string(
                    status=status, workflow=workflow, limit=explicit_limit, cursor=page.next_cursor
                )
                if page and page.next_cursor
                else None
            ),  # fmt: skip
            first_page=(
                query_string(status=status, workflow=workflow, limit=explicit_limit)
                if cursor
                else None
            ),
        )

    @_guarded
    async def run(self, run_id: str) -> QuartResponse:
        if (signed_out := self.require_session()) is not None:
            return signed_out
        notice = NOTICES.get(request.args.get("notice", ""))
        return await self.run_page(run_id, notice=notice)

    async def run_page(
        self,
        run_id: str,
        *,
        code: int = 200,
        notice: str | None = None,
        problem: str | None = None,
        draft: tuple[str, str] | None = None,
    ) -> QuartResponse:
        handle = self.rt.get_run(run_id)
        info = await handle.info()
        after = request.args.get("after") or 0
        events = await self.rt.list_events(run_id, after=after, limit=TIMELINE_PAGE)
        first = await self.rt.list_events(run_id, after=0, limit=1)
        created = first.items[0].data if first.items else {}
        hooks = await self.rt.list_hooks(run_id, limit=MAX_LIMIT)
        result, error = await self._outcome(handle, info.status)
        base = self.rt.base_url
        return self.render(
            "run.html",
            code,
            info=info,
            input=created.get("input"),
            result=result,
            error=error,
            hooks=[
                (
                    hook,
                    f"{base}{self.prefix}/webhook/{path_part(hook.token)}"
                    if hook.kind == "webhook" and base
                    else None,
                )
                for hook in hooks.items
            ],  # fmt: skip
            events=events.items,
            later_events=query_string(after=events.next_cursor) if events.next_cursor else None,
            first_events=bool(events.items) and events.items[0].seq > 1,
            notice=notice,
            problem=problem,
            draft=draft,
        )

    async def _outcome(self, handle: Any, status: str) -> tuple[Any, dict[str, str] | None]:
        """The run's result (a completed run) or error (failed, cancelled)."""
        if status == "completed":
            return codec.to_tree(await handle.result(), root="result"), None
        if status in ("failed", "cancelled"):
            try:
                await handle.result()
            except WorkflowRunFailedError as exc:
                return None, {"type": type(exc.cause).__name__, "message": str(exc.cause)}
            except WorkflowRunCancelledError as exc:
                return None, {"type": "cancelled", "message": exc.reason or "no reason given"}
        return None, None

    @_guarded
    async def hooks(self) -> QuartResponse:
        if (signed_out := self.require_session()) is not None:
            return signed_out
        cursor = request.args.get("cursor") or None
        problem, code, page = None, 200, None
        try:
            page = await self.rt.list_hooks(limit=PAGE_SIZE * 2, cursor=cursor)
        except InvalidQueryError as exc:
            problem, code = str(exc), 400
        return self.render(
            "hooks.html",
            code,
            hooks=page.items if page else (),
            problem=problem,
            next_page=query_string(cursor=page.next_cursor) if page and page.next_cursor else None,
            first_page=bool(cursor),
        )

    # -- actions -----------------------------------------------------------------------------

    @_guarded
    async def resume(self, run_id: str) -> QuartResponse:
        form = await request.form
        if (refused := self.check_post(form.get("csrf"))) is not None:
            return refused
        token, text = form.get("token", ""), form.get("payload", "")
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return await self.run_page(
                run_id,
                code=400,
                problem=f"The payload is not valid JSON ({exc}); nothing was sent.",
                draft=(token, text),
            )
        try:
            await self.rt.resume_hook(token, payload)
        except WorkflowError as exc:
            return await self.run_page(
                run_id,
                code=status_of(exc),
                problem=f"{type(exc).__name__}: {exc}; nothing was sent.",
                draft=(token, text),
            )
        return self.redirect(f"{self.ui}/runs/{path_part(run_id)}?notice=resumed")

    @_guarded
    async def cancel(self, run_id: str) -> QuartResponse:
        form = await request.form
        if (refused := self.check_post(form.get("csrf"))) is not None:
            return refused
        await self.rt.cancel_run(run_id, "cancelled from the web inspector")
        return self.redirect(f"{self.ui}/runs/{path_part(run_id)}?notice=cancelled")

    # -- signing in --------------------------------------------------------------------------

    @_guarded
    async def login(self) -> QuartResponse:
        if request.method == "GET":
            target = self._local(request.args.get("next"))
            if self.sessions.valid(request.cookies.get(COOKIE)):
                return self.redirect(target)
            return self.render("login.html", 200, next=target, problem=None)
        form = await request.form
        target = self._local(form.get("next"))
        if not self.sessions.secret_matches(form.get("secret", "")):
            return self.render(
                "login.html", 401, next=target, problem="That is not the server's resume secret."
            )
        response = self.redirect(target)
        response.set_cookie(
            COOKIE,
            self.sessions.new(),
            max_age=self.sessions.lifetime,
            path=f"{self.ui}/",
            httponly=True,
            samesite="Strict",
            secure=request.scheme == "https",
        )
        return response

    @_guarded
    async def logout(self) -> QuartResponse:
        form = await request.form
        if (refused := self.check_post(form.get("csrf"))) is not None:
            return refused
        response = self.redirect(f"{self.ui}/login")
        response.delete_cookie(COOKIE, path=f"{self.ui}/")
        return response

    async def stylesheet(self) -> QuartResponse:
        response = QuartResponse(self.css, status=200, content_type="text/css; charset=utf-8")
        response.headers["cache-control"] = "max-age=300"
        response.headers["x-content-type-options"] = "nosniff"
        return response

    # -- helpers -----------------------------------------------------------------------------

    def require_session(self) -> QuartResponse | None:
        """``None`` with a valid session; otherwise the redirect to the sign-in page."""
        if self.sessions.valid(request.cookies.get(COOKIE)):
            return None
        here = request.full_path.rstrip("?")
        return self.redirect(f"{self.ui}/login{query_string(next=here)}")

    def check_post(self, csrf: str | None) -> QuartResponse | None:
        """``None`` for a POST from this session's own page; otherwise the refusal."""
        cookie = request.cookies.get(COOKIE)
        if not self.sessions.valid(cookie):
            return self.redirect(f"{self.ui}/login")
        origin = request.headers.get("origin")
        # "null" (a privacy setting, a sandboxed frame) proves nothing either way: the CSRF
        # token below decides.
        if origin not in (None, "null") and urlsplit(origin).netloc != request.host:
            return self.problem_page(PermissionError("the form was sent from another site"), 403)
        if not self.sessions.csrf_valid(cookie, csrf):
            return self.problem_page(
                PermissionError("the form's CSRF token is missing or belongs to another session;"
                                " reload the page and try again"),
                403,
            )  # fmt: skip
        return None

    def _local(self, target: str | None) -> str:
        """``target`` if it is a page of the inspector, else the run list (no open redirect)."""
        if (
            target
            and target.startswith(f"{self.ui}/")
            and not any(c in target for c in "\\\r\n")
            and "//" not in target
        ):
            return target
        return f"{self.ui}/"

    def render(self, name: str, code: int, **context: Any) -> QuartResponse:
        cookie = request.cookies.get(COOKIE)
        signed_in = self.sessions.valid(cookie)
        now = datetime.now(UTC)
        html = self.env.get_template(name).render(
            ui=self.ui,
            csrf=self.sessions.csrf_token(cookie) if signed_in and cookie else "",
            signed_in=signed_in,
            now=now,
            ago=lambda when: ago(when, now),
            **context,
        )
        response = QuartResponse(html, status=code, content_type="text/html; charset=utf-8")
        response.headers.update(_HEADERS)
        return response

    def redirect(self, location: str) -> QuartResponse:
        response = QuartResponse("", status=303, headers={"location": location})
        response.headers.update(_HEADERS)
        return response

    def problem_page(self, exc: BaseException, code: int | None = None) -> QuartResponse:
        if code is None:
            code = status_of(exc)
        if code >= 500:
            logger.error("inspector: internal error while serving the page", exc_info=exc)
            message = "The server failed to show this page; the error has been logged."
        else:
            message = str(getattr(exc, "description", None) or exc)
        return self.render("problem.html", code, title=f"{code}", message=message)
