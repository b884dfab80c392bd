"""The public webhook route: every method, default / static / manual responses, the 504 path,
de-duplicated deliveries, body limits, and one identical 404 for every token that is not a live
webhook's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import actorflow as af
from actorflow.http.app import WEBHOOK_METHODS
from actorflow.http.responses import UNKNOWN_WEBHOOK_BODY

PREFIX = "/.well-known/workflow/v1"

pytestmark = pytest.mark.anyio


def _webhook(mode: str, timeout: float) -> Any:
    if mode == "manual":
        return af.create_webhook(respond_with="manual", respond_timeout=timeout)
    if mode == "static":
        return af.create_webhook(
            respond_with=af.Response(
                201, b"static body", {"content-type": "text/plain", "x-static": "yes"}
            )
        )
    return af.create_webhook()


def _seen(req: af.Request) -> dict[str, Any]:
    return {
        "method": req.method,
        "body": req.text(),
        "query": req.query,
        "headers": dict(req.headers),
    }


@af.workflow
async def one_request(mode: str, timeout: float = 30.0) -> dict[str, Any]:
    """Takes one request; a manual webhook echoes it back."""
    webhook = _webhook(mode, timeout)
    req = await webhook
    if mode == "manual":
        await req.respond_with(
            af.Response.json(
                {"method": req.method, "body": req.text()}, headers={"x-from": "workflow"}
            )
        )
    return _seen(req)


@af.workflow
async def held_open(mode: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Takes one request, then keeps the webhook live until hook ``done:<run_id>`` is resumed."""
    webhook = _webhook(mode, timeout)
    req = await webhook
    if mode == "manual":
        await req.respond_with(af.Response(200, b"first answer", {"x-answer": "1"}))
    seen = [_seen(req)]
    run_id = af.get_workflow_metadata().run_id
    await af.create_hook(token=f"done:{run_id}")
    return seen


@af.workflow
async def late_responder(timeout: float) -> str:
    """A manual webhook that answers only after hook ``go:<run_id>`` is resumed, then stays
    live until ``done:<run_id>``."""
    webhook = af.create_webhook(respond_with="manual", respond_timeout=timeout)
    req = await webhook
    run_id = af.get_workflow_metadata().run_id
    await af.create_hook(token=f"go:{run_id}")
    await req.respond_with(af.Response(200, b"late answer"))
    await af.create_hook(token=f"done:{run_id}")
    return req.text()


@af.workflow
async def disposes_after_one() -> str:
    """Disposes its webhook after one request, then waits on hook ``end:<run_id>``."""
    webhook = af.create_webhook()
    await webhook
    webhook.dispose()
    await af.create_hook(token=f"end:{af.get_workflow_metadata().run_id}")
    return "ended"


@af.workflow
async def plain_hook_owner() -> Any:
    return await af.create_hook(token="plain-hook-token")


WORKFLOWS = [one_request, held_open, late_responder, disposes_after_one, plain_hook_owner]


@pytest.fixture
async def rt(data_dir: Path) -> AsyncIterator[af.Runtime]:
    async with af.Runtime(
        data_dir, WORKFLOWS, durability="none", base_url="http://edge.test"
    ) as runtime:
        yield runtime


async def _webhook_url(rt: af.Runtime, wait_hooks: Callable[..., Any], run: af.Run) -> str:
    tokens = await wait_hooks(rt, run.run_id)
    return f"{PREFIX}/webhook/{tokens[0]}"


# -- every method -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", WEBHOOK_METHODS)
async def test_every_method_is_delivered_with_a_default_202(
    rt: af.Runtime, served: Any, wait_hooks: Any, method: str
) -> None:
    run = await rt.start(one_request, "default")
    url = await _webhook_url(rt, wait_hooks, run)
    async with served(rt) as client:
        response = await client.request(
            method, url + "?a=1&b=two", content=b"payload-bytes", headers={"X-Custom": "v"}
        )
    assert response.status_code == 202
    assert response.content == b""
    seen = await run.result(timeout=10)
    assert seen["method"] == method
    assert seen["body"] == "payload-bytes"
    assert seen["query"] == {"a": "1", "b": "two"}
    assert seen["headers"]["x-custom"] == "v"
    assert "remote-addr" not in seen["headers"]  # added by Quart, never sent by the client


@pytest.mark.parametrize("method", WEBHOOK_METHODS)
async def test_every_method_gets_the_manual_response(
    rt: af.Runtime, served: Any, wait_hooks: Any, method: str
) -> None:
    run = await rt.start(one_request, "manual")
    url = await _webhook_url(rt, wait_hooks, run)
    async with served(rt) as client:
        response = await client.request(method, url, content=b"hello")
    assert response.status_code == 200
    assert response.headers["x-from"] == "workflow"
    assert response.headers["content-type"] == "application/json"
    if method == "HEAD":
        assert response.content == b""  # the server drops a HEAD response's body
    else:
        assert response.json() == {"method": method, "body": "hello"}
    await run.result(timeout=10)


async def test_a_caller_waiting_past_the_read_timeout_gets_its_answer(
    rt: af.Runtime, served: Any, wait_hooks: Any
) -> None:
    """The read timeout times a request's body only: a caller that sent all of it may wait for
    a manual answer longer than that (Hypercorn's own read_timeout would cut it)."""
    run = await rt.start(late_responder, 30.0)
    url = await _webhook_url(rt, wait_hooks, run)
    answers: list[httpx.Response] = []
    async with served(rt, read_timeout=0.2) as client:

        async def post() -> None:
            answers.append(await client.post(url, content=b"body"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(post)
            await wait_hooks(rt, run.run_id, 2)  # the workflow has the request
            await anyio.sleep(0.6)  # three read timeouts
            await rt.resume_hook(f"go:{run.run_id}", None)
    assert answers[0].status_code == 200
    assert answers[0].content == b"late answer"
    await rt.resume_hook(f"done:{run.run_id}", None)
    await run.result(timeout=10)


async def test_static_response_is_returned_every_time(
    rt: af.Runtime, served: Any, wait_hooks: Any
) -> None:
    run = await rt.start(held_open, "static")
    url = await _webhook_url(rt, wait_hooks, run)
    async with served(rt) as client:
        first = await client.post(url, content=b"1")
        second = await client.put(url, content=b"2")  # buffered for the run, answered alike
    for response in (first, second):
        assert response.status_code == 201
        assert response.content == b"static body"
        assert response.headers["content-type"] == "text/plain"
        assert response.headers["x-static"] == "yes"
    await rt.resume_hook(f"done:{run.run_id}", None)
    assert [s["body"] for s in await run.result(timeout=10)] == ["1"]


async def test_manual_webhook_answers_504_after_respond_timeout_then_the_real_answer(
    rt: af.Runtime, served: Any, wait_hooks: Any, log_events: Any
) -> None:
    run = await rt.start(late_responder, 0.05)
    url = await _webhook_url(rt, wait_hooks, run)
    async with served(rt) as client:
        headers = {"Idempotency-Key": "delivery-1"}
        timed_out = await client.post(url, content=b"body", headers=headers)
        assert timed_out.status_code == 504
        assert timed_out.json()["error"] == "WebhookTimeout"
        await wait_hooks(rt, run.run_id, 2)
        await rt.resume_hook(f"go:{run.run_id}", None)
        await wait_hooks(rt, run.run_id, 3)  # responded, now waiting on done:<run_id>
        # The sender retries its delivery: it gets the workflow's answer, nothing is re-delivered.
        retried = await client.post(url, content=b"body", headers=headers)
    assert retried.status_code == 200
    assert retried.content == b"late answer"
    await rt.resume_hook(f"done:{run.run_id}", None)
    assert await run.result(timeout=10) == "body"
    requests = log_events(rt, run.run_id, "hook_received")
    assert [e.data["token"] for e in requests][1:] == [f"go:{run.run_id}", f"done:{run.run_id}"]
    assert len(log_events(rt, run.run_id, "webhook_responded")) == 1


async def test_a_retry_waiting_on_a_manual_webhook_gets_the_answer_when_it_comes(
    rt: af.Runtime, served: Any, wait_hooks: Any, log_events: Any
) -> None:
    run = await rt.start(late_responder, 0.05)
    url = await _webhook_url(rt, wait_hooks, run)
    async with served(rt) as client:
        headers = {"Idempotency-Key": "delivery-1"}
        assert (await client.post(url, content=b"b", headers=headers)).status_code == 504
        await wait_hooks(rt, run.run_id, 2)
        await rt.resume_hook(f"go:{run.run_id}", None)
        retried = await client.post(url, content=b"b", headers=headers)
    assert (retried.status_code, retried.content) == (200, b"late answer")
    assert len(log_events(rt, run.run_id, "webhook_responded")) == 1


# -- de-duplicated deliveries ---------------------------------------------------------------------


@pytest.mark.parametrize("header", ["Idempotency-Key", "webhook-id", "X-GitHub-Delivery"])
async def test_a_repeated_delivery_id_is_answered_again_and_appends_nothing(
    rt: af.Runtime, served: Any, wait_hooks: Any, log_events: Any, header: str
) -> None:
    run = await rt.start(held_open, "default")
    url = await _webhook_url(rt, wait_hooks, run)
    async with served(rt) as client:
        responses = [
            await client.post(url, content=b"once", headers={header: "d-1"}) for _ in range(3)
        ]
        other = await client.post(url, content=b"another", headers={header: "d-2"})
    assert [r.status_code for r in responses] == [202, 202, 202]
    assert other.status_code == 202
    webhook_events = [
        e
        for e in log_events(rt, run.run_id, "hook_received")
        if e.data["token"] != f"done:{run.run_id}"
    ]
    assert [e.data["idempotency_key"] for e in webhook_events] == [
        f"{header.lower()}:d-1",
        f"{header.lower()}:d-2",
    ]
    await rt.resume_hook(f"done:{run.run_id}", None)
    assert [s["body"] for s in await run.result(timeout=10)] == ["once"]


async def test_a_repeated_delivery_to_a_manual_webhook_gets_the_same_answer(
    rt: af.Runtime, served: Any, wait_hooks: Any, log_events: Any
) -> None:
    run = await rt.start(held_open, "manual")
    url = await _webhook_url(rt, wait_hooks, run)
    async with served(rt) as client:
        first = await client.post(url, content=b"x", headers={"Idempotency-Key": "k"})
        again = await client.post(url, content=b"x", headers={"Idempotency-Key": "k"})
    for response in (first, again):
        assert response.status_code == 200
        assert response.content == b"first answer"
        assert response.headers["x-answer"] == "1"
    assert len(log_events(rt, run.run_id, "hook_received")) == 1
    assert len(log_events(rt, run.run_id, "webhook_responded")) == 1


async def test_a_retry_after_the_webhook_is_gone_still_gets_the_stored_response(
    rt: af.Runtime, served: Any, wait_hooks: Any
) -> None:
    run = await rt.start(one_request, "manual")
    url = await _webhook_url(rt, wait_hooks, run)
    async with served(rt) as client:
        first = await client.post(url, content=b"x", headers={"Idempotency-Key": "k"})
        await run.result(timeout=10)  # the run ended: its webhook is gone
        retry = await client.post(url, content=b"x", headers={"Idempotency-Key": "k"})
    assert first.status_code == 200
    assert (retry.status_code, retry.content) == (first.status_code, first.content)


# -- one 404 for every token that is not a live webhook's --------------------------------------


async def test_unknown_disposed_ended_and_plain_hook_tokens_get_one_identical_404(
    rt: af.Runtime, served: Any, wait_hooks: Any, until: Any
) -> None:
    ended = await rt.start(one_request, "default")
    ended_url = await _webhook_url(rt, wait_hooks, ended)
    disposed = await rt.start(disposes_after_one)
    disposed_url = await _webhook_url(rt, wait_hooks, disposed)
    plain = await rt.start(plain_hook_owner)
    assert await wait_hooks(rt, plain.run_id) == ["plain-hook-token"]
    async with served(rt) as client:
        assert (await client.post(ended_url)).status_code == 202
        await ended.result(timeout=10)
        assert (await client.post(disposed_url)).status_code == 202
        await until(lambda: rt.state.runs[disposed.run_id].hooks == [f"end:{disposed.run_id}"])
        responses = [
            await client.post(f"{PREFIX}/webhook/never-issued-token"),
            await client.post(ended_url),
            await client.post(disposed_url),
            await client.post(f"{PREFIX}/webhook/plain-hook-token"),
            await client.get(f"{PREFIX}/webhook/plain-hook-token"),
        ]
    for response in responses:
        assert response.status_code == 404
        assert response.content == UNKNOWN_WEBHOOK_BODY
        assert response.headers["content-type"] == "application/json"
    assert "plain-hook-token" not in responses[-1].text  # nothing of the token is reflected
    assert len({tuple(sorted(r.headers.keys())) for r in responses}) == 1
    # The plain hook was not resumed by any of that.
    assert await plain.status() == "running"


@pytest.mark.parametrize(
    "raw_token",
    [
        "a%2Fb",  # an encoded slash
        "a/b",
        "%2E%2E",  # "..", encoded so that no client normalises it away
        "a%2F..%2F..%2Fhealthz",
        "..%2F..%2Fhooks%2Fresume",
        "%C3%BCn%C3%AFc%C3%B8d%C3%A9-%D1%82%D0%BE%D0%BA%D0%B5%D0%BD-%F0%9F%94%91",
        "%FF%FE",  # not UTF-8
        "x" * 10_240,
        "%00",
    ],
)
async def test_hostile_tokens_get_the_same_404(rt: af.Runtime, served: Any, raw_token: str) -> None:
    async with served(rt) as client:
        response = await client.post(httpx.URL(f"{client.base_url}{PREFIX}/webhook/{raw_token}"))
    assert response.status_code == 404
    assert response.content == UNKNOWN_WEBHOOK_BODY


async def test_a_real_token_with_a_trailing_segment_is_not_that_webhook(
    rt: af.Runtime, served: Any, wait_hooks: Any
) -> None:
    run = await rt.start(one_request, "default")
    url = await _webhook_url(rt, wait_hooks, run)
    async with served(rt) as client:
        token = url.rsplit("/", 1)[1]
        swapped = url[: -len(token)] + token.swapcase()
        for variant in (url + "/", url + "/x", url + "%2F", swapped, url[:-1]):
            response = await client.post(httpx.URL(f"{client.base_url}{variant}"))
            assert response.status_code == 404, variant
            assert response.content == UNKNOWN_WEBHOOK_BODY
    assert await run.status() == "running"


# -- body limits ----------------------------------------------------------------------------------


async def test_body_over_max_body_is_413_by_content_length(
    rt: af.Runtime, served: Any, wait_hooks: Any, log_events: Any
) -> None:
    run = await rt.start(one_request, "default")
    url = await _webhook_url(rt, wait_hooks, run)
    async with served(rt, max_body=1024) as client:
        too_big = await client.post(url, content=b"x" * 1025)
        assert too_big.status_code == 413
        assert too_big.json()["error"] == "RequestEntityTooLarge"
        assert log_events(rt, run.run_id, "hook_received") == []
        exact = await client.post(url, content=b"x" * 1024)
    assert exact.status_code == 202
    assert len((await run.result(timeout=10))["body"]) == 1024


async def test_streamed_body_over_max_body_is_413(
    rt: af.Runtime, served: Any, wait_hooks: Any, log_events: Any
) -> None:
    run = await rt.start(one_request, "default")
    url = await _webhook_url(rt, wait_hooks, run)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"y" * 300  # no Content-Length: chunked, counted as it arrives

    async with served(rt, max_body=1024) as client:
        response = await client.post(url, content=chunks())
    assert response.status_code == 413
    assert log_events(rt, run.run_id, "hook_received") == []
    assert await run.status() == "running"


async def test_any_content_type_reaches_the_workflow(
    rt: af.Runtime, served: Any, wait_hooks: Any
) -> None:
    run = await rt.start(one_request, "default")
    url = await _webhook_url(rt, wait_hooks, run)
    async with served(rt) as client:
        response = await client.post(
            url, content=b"<xml> not json {", headers={"content-type": "application/x-weird"}
        )
    assert response.status_code == 202
    seen = await run.result(timeout=10)
    assert seen["headers"]["content-type"] == "application/x-weird"


async def test_webhook_url_uses_the_base_url(rt: af.Runtime, wait_hooks: Any) -> None:
    @af.workflow(name="url_reporter")
    async def url_reporter() -> str:
        webhook = af.create_webhook()
        url = webhook.url
        await webhook
        return url

    rt.register(url_reporter)
    run = await rt.start(url_reporter)
    tokens = await wait_hooks(rt, run.run_id)
    await rt.resume_webhook(tokens[0], af.Request("POST", "http://x/"))
    assert await run.result(timeout=10) == f"http://edge.test{PREFIX}/webhook/{tokens[0]}"


async def test_a_users_own_route_can_pass_the_quart_request(
    rt: af.Runtime, served: Any, wait_hooks: Any, anyio_backend: str
) -> None:
    """``resume_webhook`` takes Quart's request object as it is (SPEC 3)."""
    from quart import request

    from actorflow.http import create_app

    app = create_app(rt, manage_runtime=False, worker=anyio_backend)  # type: ignore[arg-type]

    async def own_route(token: str) -> tuple[bytes, int]:
        response = await rt.resume_webhook(token, request)
        return response.body_bytes, response.status

    app.add_url_rule("/my/hooks/<token>", "own_route", own_route, methods=["PUT"])
    run = await rt.start(one_request, "manual")
    [token] = await wait_hooks(rt, run.run_id)
    async with served(rt, app=app) as client:
        response = await client.put(
            f"/my/hooks/{token}?x=1", content=b"via quart", headers={"X-A": "b"}
        )
    assert response.status_code == 200
    assert response.json() == {"method": "PUT", "body": "via quart"}
    seen = await run.result(timeout=10)
    assert seen["query"] == {"x": "1"}
    assert seen["headers"]["x-a"] == "b"
