"""The web inspector over plain HTTP (a real Hypercorn, httpx, both workers): signing in, the
cookie's flags, CSRF, escaping, bad input committing nothing. What a browser shows is
``tests/browser/``; these are the rules a browser cannot be trusted to check."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import wait_for_hook
from tests.web.conftest import current_worker

import actorflow as af
from actorflow.http import create_app
from actorflow.http.inspector import COOKIE
from actorflow.http.inspector.session import Sessions

pytestmark = pytest.mark.anyio

SECRET = "test-resume-secret-0123456789"
UI = "/.well-known/workflow/v1/ui"


@af.workflow
async def approval(order_id: str) -> Any:
    return await af.create_hook(token=f"approval:{order_id}", metadata={"order": order_id})


@af.workflow
async def fails(message: str) -> None:
    raise ValueError(message)


@pytest.fixture
async def rt(data_dir: Path) -> AsyncIterator[af.Runtime]:
    async with af.Runtime(
        data_dir, [approval, fails], durability="none", base_url="http://edge.test"
    ) as runtime:
        yield runtime


async def sign_in(client: httpx.AsyncClient) -> str:
    """Sign in; the CSRF token of the session (read from the run list's sign-out form)."""
    response = await client.post(f"{UI}/login", data={"secret": SECRET, "next": f"{UI}/"})
    assert response.status_code == 303, response.text
    page = await client.get(f"{UI}/")
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found is not None
    return found.group(1)


async def test_without_a_session_every_page_sends_the_browser_to_sign_in(
    rt: af.Runtime, served: Any
) -> None:
    run = await rt.start(approval, "a")
    async with served(rt) as client:
        for path in (f"{UI}/", f"{UI}/hooks", f"{UI}/runs/{run.run_id}"):
            response = await client.get(path)
            assert response.status_code == 303
            assert response.headers["location"].startswith(f"{UI}/login?next=")
        login = await client.get(f"{UI}/login")
        assert login.status_code == 200
        assert 'type="password"' in login.text
        # An action without a session does nothing.
        cancel = await client.post(f"{UI}/runs/{run.run_id}/cancel", data={"csrf": "x"})
        assert cancel.status_code == 303
    assert await run.status() in ("pending", "running")


async def test_the_inspector_is_off_without_a_resume_secret(rt: af.Runtime, served: Any) -> None:
    async with served(rt, resume_secret=None) as client:
        for path in (f"{UI}/", f"{UI}/login", f"{UI}/static/inspector.css"):
            assert (await client.get(path)).status_code == 404


async def test_signing_in_sets_an_httponly_strict_cookie_and_a_wrong_secret_is_refused(
    rt: af.Runtime, served: Any
) -> None:
    async with served(rt) as client:
        wrong = await client.post(f"{UI}/login", data={"secret": "guess", "next": f"{UI}/"})
        assert wrong.status_code == 401
        assert "set-cookie" not in wrong.headers
        assert "not the server" in wrong.text
        right = await client.post(f"{UI}/login", data={"secret": SECRET, "next": f"{UI}/hooks"})
        assert right.status_code == 303
        assert right.headers["location"] == f"{UI}/hooks"
        cookie = right.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert SECRET not in cookie
        flags = {part.strip().lower() for part in cookie.split(";")}
        assert {"httponly", "samesite=strict", f"path={UI.lower()}/", "max-age=43200"} <= flags
        assert "secure" not in flags  # plain HTTP here; see the HTTPS test below
        page = await client.get(f"{UI}/")
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert "script-src" not in policy  # no script of any origin
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"
        # An absolute or foreign "next" is not followed (no open redirect).
        client.cookies.clear()
        away = await client.post(
            f"{UI}/login", data={"secret": SECRET, "next": "https://evil.test/"}
        )
        assert away.headers["location"] == f"{UI}/"


async def test_a_post_without_the_sessions_csrf_token_changes_nothing(
    rt: af.Runtime, served: Any
) -> None:
    run = await rt.start(approval, "csrf")
    await wait_for_hook(rt, "approval:csrf")
    async with served(rt) as client:
        csrf = await sign_in(client)
        events = rt.state.events
        missing = await client.post(f"{UI}/runs/{run.run_id}/cancel", data={})
        forged = await client.post(f"{UI}/runs/{run.run_id}/cancel", data={"csrf": "0" * 64})
        cross = await client.post(
            f"{UI}/runs/{run.run_id}/resume",
            data={"csrf": csrf, "token": "approval:csrf", "payload": "1"},
            headers={"origin": "https://evil.test"},
        )
        assert (missing.status_code, forged.status_code, cross.status_code) == (403, 403, 403)
        assert rt.state.events == events
        assert await run.status() == "running"
        ok = await client.post(f"{UI}/runs/{run.run_id}/cancel", data={"csrf": csrf})
        assert ok.status_code == 303
        assert ok.headers["location"].endswith("?notice=cancelled")
    assert await run.status() == "cancelled"


async def test_bad_json_is_a_clear_message_and_commits_nothing(rt: af.Runtime, served: Any) -> None:
    run = await rt.start(approval, "json")
    await wait_for_hook(rt, "approval:json")
    async with served(rt) as client:
        csrf = await sign_in(client)
        events = rt.state.events
        bad = await client.post(
            f"{UI}/runs/{run.run_id}/resume",
            data={"csrf": csrf, "token": "approval:json", "payload": "{approved: yes}"},
        )
        assert bad.status_code == 400
        assert "The payload is not valid JSON" in bad.text
        assert "nothing was sent" in bad.text
        assert "{approved: yes}</textarea>" in bad.text  # kept for the operator to fix
        gone = await client.post(
            f"{UI}/runs/{run.run_id}/resume",
            data={"csrf": csrf, "token": "approval:nobody", "payload": "1"},
        )
        assert gone.status_code == 404
        assert "HookNotFoundError" in gone.text
        assert rt.state.events == events
        good = await client.post(
            f"{UI}/runs/{run.run_id}/resume",
            data={"csrf": csrf, "token": "approval:json", "payload": '{"approved": true}'},
        )
        assert good.status_code == 303
    assert await run.result() == {"approved": True}


async def test_user_values_are_escaped_everywhere_they_show(rt: af.Runtime, served: Any) -> None:
    evil = "<script>alert(1)</script>"
    run = await rt.start(approval, evil)
    failed = await rt.start(fails, evil)
    token = f"approval:{evil}"
    await wait_for_hook(rt, token)
    await rt.resume_hook(token, {"note": evil})
    await run.wait()
    await failed.wait()
    async with served(rt) as client:
        await sign_in(client)
        pages = [
            await client.get(f"{UI}/runs/{run.run_id}"),
            await client.get(f"{UI}/runs/{failed.run_id}"),
            await client.get(f"{UI}/hooks"),
            await client.get(f"{UI}/", params={"workflow": evil}),
        ]
    for page in pages:
        assert page.status_code == 200
        assert "<script" not in page.text
    assert "&lt;script&gt;" in pages[0].text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[1].text  # the error message


async def test_unknown_runs_and_bad_filters_are_clear_pages(rt: af.Runtime, served: Any) -> None:
    async with served(rt) as client:
        await sign_in(client)
        missing = await client.get(f"{UI}/runs/wrun_{'0' * 32}")
        bad_status = await client.get(f"{UI}/", params={"status": "sleeping"})
        bad_cursor = await client.get(f"{UI}/", params={"cursor": "nope"})
        bad_after = await client.get(f"{UI}/runs/wrun_{'0' * 32}", params={"after": "-1"})
    assert missing.status_code == 404
    assert "no workflow run has id" in missing.text
    assert bad_status.status_code == 400
    assert "status must be one of" in bad_status.text
    assert bad_cursor.status_code == 400
    assert "cursor" in bad_cursor.text
    assert bad_after.status_code in (400, 404)


async def test_the_run_list_pages_and_filters(rt: af.Runtime, served: Any) -> None:
    started = [await rt.start(fails, f"f{n}") for n in range(5)]
    waiting = await rt.start(approval, "w")
    for run in started:
        await run.wait()
    async with served(rt) as client:
        await sign_in(client)
        first = await client.get(f"{UI}/", params={"status": "failed", "limit": "2"})
        shown = re.findall(r'href="[^"]*/runs/(wrun_[0-9a-f]+)"', first.text)
        assert len(shown) == 2
        older = re.search(r'rel="next" href="([^"]+)"', first.text)
        assert older is not None
        seen = list(shown)
        while older is not None:
            page = await client.get(older.group(1).replace("&amp;", "&"))
            seen += re.findall(r'href="[^"]*/runs/(wrun_[0-9a-f]+)"', page.text)
            older = re.search(r'rel="next" href="([^"]+)"', page.text)
        assert seen == [run.run_id for run in reversed(started)]  # newest first, each once
        by_workflow = await client.get(f"{UI}/", params={"workflow": "approval"})
    assert re.findall(r'href="[^"]*/runs/(wrun_[0-9a-f]+)"', by_workflow.text) == [waiting.run_id]


async def test_over_https_the_cookie_is_secure(rt: af.Runtime) -> None:
    # The app's own test client (no TLS server needed to give a request the https scheme).
    app = create_app(rt, resume_secret=SECRET, manage_runtime=False, worker=current_worker())  # type: ignore[arg-type]
    client = app.test_client()
    response = await client.post(
        f"{UI}/login", form={"secret": SECRET, "next": f"{UI}/"}, scheme="https"
    )
    assert response.status_code == 303
    flags = {part.strip().lower() for part in response.headers["set-cookie"].split(";")}
    assert "secure" in flags


@af.workflow
async def chatty() -> int:
    count = 0
    async for _ in af.create_hook(token="chatty"):
        count += 1
    return count


async def test_a_long_timeline_is_paged_by_100(data_dir: Path, served: Any) -> None:
    async with af.Runtime(data_dir, [chatty], durability="none") as rt:
        run = await rt.start(chatty)
        await wait_for_hook(rt, "chatty")
        for n in range(110):
            await rt.resume_hook("chatty", n)
        await rt.wait_idle()
        total = len(rt.state.runs[run.run_id].positions)
        assert total > 110
        async with served(rt) as client:
            await sign_in(client)
            first = await client.get(f"{UI}/runs/{run.run_id}")
            later = re.search(r'rel="next" href="([^"]+)"', first.text)
            assert later is not None
            second = await client.get(later.group(1).replace("&amp;", "&"))
    seqs = [int(s) for s in re.findall(r'<tr class="event [a-z_]+">\s*<td>(\d+)</td>', first.text)]
    rest = [int(s) for s in re.findall(r'<tr class="event [a-z_]+">\s*<td>(\d+)</td>', second.text)]
    assert seqs == list(range(1, 101))
    assert rest == list(range(101, total + 1))
    assert 'rel="next"' not in second.text


def test_sessions_expire_and_belong_to_their_secret() -> None:
    now = [1_000_000.0]
    sessions = Sessions(SECRET, lifetime=3600, clock=lambda: now[0])
    cookie = sessions.new()
    assert sessions.valid(cookie)
    token = sessions.csrf_token(cookie)
    assert sessions.csrf_valid(cookie, token)
    assert not sessions.csrf_valid(sessions.new(), token)  # another session's token
    assert not Sessions("another-secret-0123456789", clock=lambda: now[0]).valid(cookie)
    assert not sessions.valid(cookie[:-1] + ("0" if cookie[-1] != "0" else "1"))
    now[0] += 3600
    assert not sessions.valid(cookie)
    assert not sessions.csrf_valid(cookie, token)
