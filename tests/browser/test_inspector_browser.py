"""The web inspector in a real browser, against a real ``actorflow serve`` process.

The server serves ``tests/fixtures/inspector_app.py``; runs are put into every state through the
bearer HTTP API (waiting on a hook, a webhook and a sleep; completed, failed, cancelled), then
an operator's checks are made through the pages in chromium: signing in, the run list, its
filters and pages, a run's timeline, resuming a hook from the page until the run completes,
cancelling, and user values shown as text. On both workers (asyncio and trio).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.fixtures.server_process import SECRET, ServerProcess

pytestmark = pytest.mark.slow

PREFIX = "/.well-known/workflow/v1"
UI = f"{PREFIX}/ui"
AUTH = {"authorization": f"Bearer {SECRET}"}
EVIL = "<script>alert('inspector')</script>"
#: Runs of the failing workflow started first, so that the list has pages.
FILLER = 8


@dataclass
class Served:
    url: str
    api: httpx.Client
    runs: dict[str, str] = field(default_factory=dict)  # label -> run id

    def start(self, workflow: str, *args: Any) -> str:
        response = self.api.post(f"{PREFIX}/runs", json={"workflow": workflow, "args": list(args)})
        assert response.status_code == 201, response.text
        return str(response.json()["run_id"])

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.api.get(f"{PREFIX}/runs/{run_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_for(self, run_id: str, check: Any, what: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll the run (another process) until ``check(run)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if check(run):
                return run
            assert time.monotonic() < deadline, f"run {run_id} never {what}: {run}"
            time.sleep(0.02)

    def wait_hooks(self, run_id: str) -> list[dict[str, Any]]:
        run = self.wait_for(run_id, lambda r: r["hooks"], "created its hook")
        return list(run["hooks"])

    def resume(self, token: str, payload: Any) -> None:
        response = self.api.post(
            f"{PREFIX}/hooks/resume", json={"token": token, "payload": payload}
        )
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """A server with runs in every state (see the module's docstring)."""
    tmp = tmp_path_factory.mktemp(f"inspector-{request.param}")
    server = ServerProcess(tmp / "data", tmp / "server.log", app="inspector_app")
    url = server.start(request.param)
    try:
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as api:
            s = Served(url, api)
            fillers = [s.start("charge", f"F-{n}") for n in range(FILLER)]
            s.runs["done"] = s.start("approval", "A-100", 120)
            s.runs["failed"] = s.start("charge", "D-400")
            s.runs["sleeping"] = s.start("reminder", "E-500")
            s.runs["webhook"] = s.start("delivery", "F-600")
            s.runs["evil"] = s.start("approval", EVIL)
            s.runs["cancelled"] = s.start("approval", "C-300")
            s.runs["waiting"] = s.start("approval", "B-200", 75)
            s.wait_hooks(s.runs["done"])
            s.resume("approval:A-100", {"approved": True, "by": "ana"})
            s.wait_hooks(s.runs["evil"])
            s.resume(f"approval:{EVIL}", {"note": EVIL})
            s.wait_hooks(s.runs["cancelled"])
            assert api.post(f"{PREFIX}/runs/{s.runs['cancelled']}/cancel").status_code == 200
            for label in ("done", "evil"):
                s.wait_for(s.runs[label], lambda r: r["status"] == "completed", "completed")
            for run_id in [*fillers, s.runs["failed"]]:
                s.wait_for(run_id, lambda r: r["status"] == "failed", "failed")
            for label in ("sleeping", "webhook", "waiting"):
                s.wait_for(s.runs[label], lambda r: r["status"] == "running", "started")
            s.wait_hooks(s.runs["webhook"])
            s.wait_hooks(s.runs["waiting"])
            s.runs.update({f"filler-{n}": run_id for n, run_id in enumerate(fillers)})
            yield s
    finally:
        code = server.stop()
    assert code == 0, server.text()[-5000:]
    assert "Traceback" not in server.text(), server.text()[-5000:]


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    """A signed-in page (its own browser context: its own cookies)."""
    context = browser.new_context(base_url=served.url, viewport={"width": 1280, "height": 860})
    tab = context.new_page()
    dialogs: list[str] = []
    tab.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(tab)
    yield tab
    context.close()
    assert dialogs == [], f"a script ran on an inspector page: {dialogs}"


def sign_in(tab: Any) -> None:
    tab.goto(f"{UI}/")
    assert f"{UI}/login" in tab.url  # signed out: sent to the sign-in form
    tab.fill("#secret", SECRET)
    tab.click("button:has-text('Sign in')")
    tab.wait_for_url(f"**{UI}/")


def listed(tab: Any) -> list[str]:
    """The run ids of the run list's rows, top to bottom."""
    return [
        text.strip() for text in tab.locator("table.runs tbody td:first-child a").all_inner_texts()
    ]


def statuses(tab: Any) -> dict[str, str]:
    rows = tab.locator("table.runs tbody tr")
    out = {}
    for n in range(rows.count()):
        row = rows.nth(n)
        out[row.locator("td").nth(0).inner_text().strip()] = (
            row.locator(".status").inner_text().strip()
        )
    return out


# -- the run list ---------------------------------------------------------------------------------


def test_signing_in_sets_a_cookie_no_script_can_read(browser: Any, served: Served) -> None:
    context = browser.new_context(base_url=served.url)
    tab = context.new_page()
    tab.goto(f"{UI}/login")
    tab.fill("#secret", "not-the-secret")
    tab.click("button:has-text('Sign in')")
    assert "not the server's resume secret" in tab.locator(".problem").inner_text()
    assert context.cookies() == []
    sign_in(tab)
    [cookie] = context.cookies()
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert SECRET not in cookie["value"]
    assert tab.evaluate("document.cookie") == ""
    tab.click("button:has-text('Sign out')")
    tab.wait_for_url(f"**{UI}/login")
    assert context.cookies() == []
    context.close()


def test_the_run_list_shows_every_state_newest_first(
    page: Any, served: Served, screenshots: Path
) -> None:
    shown = statuses(page)
    runs = served.runs
    assert shown[runs["waiting"]] == "running"
    assert shown[runs["cancelled"]] == "cancelled"
    assert shown[runs["done"]] == "completed"
    assert shown[runs["failed"]] == "failed"
    assert shown[runs["sleeping"]] == "running"
    assert listed(page)[0] == runs["waiting"]  # started last
    path = screenshots / "inspector-runs.png"
    page.screenshot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_filters_narrow_the_list(page: Any, served: Served) -> None:
    page.select_option("select[name=status]", "failed")
    page.click("button:has-text('Filter')")
    page.wait_for_url("**status=failed**")
    failed = statuses(page)
    assert set(failed.values()) == {"failed"}
    assert served.runs["failed"] in failed and len(failed) == FILLER + 1
    page.select_option("select[name=status]", "")
    page.select_option("select[name=workflow]", "reminder")
    page.click("button:has-text('Filter')")
    page.wait_for_url("**workflow=reminder**")
    assert listed(page) == [served.runs["sleeping"]]
    page.click("a:has-text('Clear')")
    page.wait_for_url(f"**{UI}/")
    assert set(statuses(page).values()) >= {"running", "completed", "failed", "cancelled"}


def test_paging_through_the_list_shows_each_run_once(page: Any, served: Served) -> None:
    page.goto(f"{UI}/?status=failed&limit=4")
    seen = listed(page)
    assert len(seen) == 4
    while page.locator("a[rel=next]").count():
        page.click("a[rel=next]")
        page.wait_for_load_state()
        seen += listed(page)
        assert page.locator("a:has-text('Newest')").count() == 1
    failed = [served.runs["failed"], *reversed([served.runs[f"filler-{n}"] for n in range(FILLER)])]
    assert seen == failed


# -- a run's page ---------------------------------------------------------------------------------


def test_a_completed_runs_page_shows_input_result_and_timeline(page: Any, served: Served) -> None:
    run_id = served.runs["done"]
    page.click(f"a:has-text('{run_id}')")
    page.wait_for_url(f"**{UI}/runs/{run_id}")
    assert page.locator("#run-status").inner_text() == "completed"
    assert "A-100" in page.locator("#run-input").inner_text()
    result = page.locator("#run-result").inner_text()
    assert '"by": "ana"' in result and '"approved": true' in result
    timeline = [t.strip() for t in page.locator("table.timeline .etype").all_inner_texts()]
    assert timeline[0] == "run_created"
    assert timeline[-1] == "run_completed"
    for kind in ("run_started", "hook_created", "hook_received"):
        assert kind in timeline
    assert timeline.index("hook_created") < timeline.index("hook_received")


def test_failed_sleeping_and_webhook_runs_show_what_they_are_about(
    page: Any, served: Served
) -> None:
    page.goto(f"{UI}/runs/{served.runs['failed']}")
    error = page.locator("#run-error").inner_text()
    assert "ValueError" in error and "card declined for D-400" in error
    page.goto(f"{UI}/runs/{served.runs['sleeping']}")
    sleeps = page.locator("#sleeps").inner_text()
    assert "until" in sleeps and "in 23 h" in sleeps
    page.goto(f"{UI}/runs/{served.runs['webhook']}")
    url = page.locator("#hooks code.url").inner_text()
    assert url.startswith(f"{served.url}{PREFIX}/webhook/")
    assert page.locator("#hooks form.resume").count() == 0  # a webhook is resumed over HTTP


def test_resuming_a_hook_from_the_page_completes_the_run(
    page: Any, served: Served, screenshots: Path
) -> None:
    run_id = served.runs["waiting"]
    page.goto(f"{UI}/runs/{run_id}")
    assert page.locator("#run-status").inner_text() == "running"
    assert "approval:B-200" in page.locator("#hooks").inner_text()
    path = screenshots / "inspector-run.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page.fill("#hooks textarea[name=payload]", "{approved: yes}")
    page.click("#hooks button:has-text('Resume')")
    assert "The payload is not valid JSON" in page.locator(".problem").inner_text()
    assert page.locator("#hooks textarea[name=payload]").input_value() == "{approved: yes}"
    assert served.run(run_id)["status"] == "running"  # nothing was sent

    page.fill("#hooks textarea[name=payload]", '{"approved": true, "by": "page"}')
    page.click("#hooks button:has-text('Resume')")
    assert "Payload delivered" in page.locator(".notice").inner_text()
    deadline = time.monotonic() + 20
    while page.locator("#run-status").inner_text() != "completed":
        assert time.monotonic() < deadline, "the run never completed after the resume"
        time.sleep(0.05)
        page.reload()
    assert '"by": "page"' in page.locator("#run-result").inner_text()
    assert "hook_received" in page.locator("table.timeline").inner_text()


def test_cancelling_from_the_page(page: Any, served: Served) -> None:
    run_id = served.start("approval", "G-700")
    served.wait_hooks(run_id)
    page.goto(f"{UI}/runs/{run_id}")
    page.click("button:has-text('Cancel run')")
    assert page.locator(".notice").inner_text() == "Run cancelled."
    assert page.locator("#run-status").inner_text() == "cancelled"
    assert "cancelled from the web inspector" in page.locator("#run-error").inner_text()
    assert page.locator("button:has-text('Cancel run')").count() == 0
    assert served.run(run_id)["status"] == "cancelled"
    timeline = page.locator("table.timeline").inner_text()
    assert "run_cancelled" in timeline


def test_payloads_with_markup_are_shown_as_text(page: Any, served: Served) -> None:
    page.goto(f"{UI}/runs/{served.runs['evil']}")
    assert EVIL in page.locator("#run-input").inner_text()
    assert EVIL in page.locator("#run-result").inner_text()
    assert EVIL in page.locator("table.timeline").inner_text()
    assert page.locator("script").count() == 0
    page.goto(f"{UI}/hooks")
    assert page.locator("script").count() == 0
