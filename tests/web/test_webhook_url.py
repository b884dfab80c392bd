"""``webhook.url``: built from the runtime's base URL; a plain hook or a missing base URL is a
clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

import actorflow as af

PREFIX = "/.well-known/workflow/v1"

pytestmark = pytest.mark.anyio


@af.step
async def announce(url: str) -> str:
    return f"sent {url}"


@af.workflow
async def announces_its_url() -> list[str]:
    webhook = af.create_webhook()
    sent = await announce(webhook.url)
    await webhook
    return [webhook.url, sent]


@af.workflow
async def asks_url_of(kind: str) -> str:
    hook = af.create_hook(token="plain-token") if kind == "plain" else af.create_webhook()
    try:
        return hook.url
    except af.WorkflowDefinitionError as exc:
        return f"refused: {exc}"


async def _resume_webhook_when_ready(rt: af.Runtime, run: af.Run, wait_hooks: Any) -> str:
    [token] = await wait_hooks(rt, run.run_id)
    with anyio.fail_after(10):
        while True:  # the step has run: the workflow now waits on its webhook
            if rt.state.runs[run.run_id].status == "running" and not rt.state.steps:
                break
            await anyio.sleep(0.001)
    return str(token)


async def test_webhook_url_is_the_public_route(data_dir: Path, wait_hooks: Any) -> None:
    async with af.Runtime(
        data_dir, [announces_its_url], durability="none", base_url="https://a.test/"
    ) as rt:
        run = await rt.start(announces_its_url)
        token = await _resume_webhook_when_ready(rt, run, wait_hooks)
        await rt.resume_webhook(token, af.Request("POST", "https://a.test/"))
        url = f"https://a.test{PREFIX}/webhook/{token}"
        assert await run.result(timeout=10) == [url, f"sent {url}"]


@pytest.mark.parametrize(
    ("kind", "base_url", "expected"),
    [("plain", "https://a.test", "plain hook, which has no URL"), ("webhook", None, "base URL")],
)
async def test_url_of_a_plain_hook_or_without_base_url_is_refused(
    data_dir: Path, kind: str, base_url: str | None, expected: str
) -> None:
    async with af.Runtime(data_dir, [asks_url_of], durability="none", base_url=base_url) as rt:
        run = await rt.start(asks_url_of, kind)
        result = await run.result(timeout=10)
    assert result.startswith("refused: ")
    assert expected in result


async def test_webhook_url_survives_a_restart_with_another_base_url(
    data_dir: Path, wait_hooks: Any
) -> None:
    async with af.Runtime(data_dir, [announces_its_url], base_url="http://127.0.0.1:8000") as rt:
        run = await rt.start(announces_its_url)
        token = await _resume_webhook_when_ready(rt, run, wait_hooks)
    async with af.Runtime(data_dir, [announces_its_url], base_url="http://127.0.0.1:9000") as rt:
        await rt.resume_webhook(token, af.Request("POST", "http://127.0.0.1:9000/"))
        url = f"http://127.0.0.1:8000{PREFIX}/webhook/{token}"
        assert await rt.get_run(run.run_id).result(timeout=10) == [url, f"sent {url}"]
