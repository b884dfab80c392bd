"""The webhook route's two ways in answer alike.

``create_app`` serves the public webhook route at the ASGI layer, ahead of Quart
(``webhook_route.py``); the blueprint mounted in a user's own Quart app serves it through a
Quart view. The same raw requests go to both, on real servers, and must get the same status,
headers and body, and the workflow must see the same request (method, URL, headers, body).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from quart import Quart
from tests.web.conftest import Served, current_worker

import actorflow as af
from actorflow.http import create_app
from actorflow.http.app import create_blueprint

pytestmark = pytest.mark.anyio

PREFIX = "/.well-known/workflow/v1"
MAX_BODY = 64
#: Requests the ASGI route leaves to Quart, whose 404 and 405 are create_app's JSON ones.
FALL_THROUGH = ("a longer word", "a method no webhook takes")


@af.workflow
async def echoes() -> None:
    """A manual webhook that answers every request with what it saw, and a default one."""
    echo = af.create_webhook(respond_with="manual")
    af.create_webhook()
    async for req in echo:
        if req.method == "PATCH":  # a header no server may send: the workflow's bug
            await req.respond_with(af.Response(200, b"", {"x-bad": "one\r\ntwo"}))
            continue
        seen = {"method": req.method, "url": req.url, "headers": dict(req.headers)}
        seen["body"] = req.body.decode("latin-1")
        await req.respond_with(af.Response.json(seen, status=201, headers={"x-seen": "yes"}))


def _user_app() -> Quart:
    if current_worker() == "trio":
        from quart_trio import QuartTrio

        return QuartTrio("users")
    return Quart("users")


async def _exchange(url: str, raw: bytes) -> tuple[bytes, dict[bytes, list[bytes]], bytes]:
    """Send ``raw`` on a new connection and read one answer, framed by its Content-Length."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with anyio.fail_after(10):
        async with await anyio.connect_tcp(host, int(port)) as stream:
            reader = BufferedByteReceiveStream(stream)
            await stream.send(raw)
            head = await reader.receive_until(b"\r\n\r\n", 65536)
            lines = head.split(b"\r\n")
            headers: dict[bytes, list[bytes]] = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.lower() not in (b"date", b"server"):
                    headers.setdefault(name.lower(), []).append(value.strip())
            length = int(headers.get(b"content-length", [b"0"])[0])
            head_request = raw.startswith(b"HEAD ")
            body = b"" if head_request else await reader.receive_exactly(length)
    return lines[0], headers, body


def _requests(echo: str, default: str) -> list[tuple[str, bytes]]:
    def req(method: str, path: str, extra: str = "", body: bytes = b"") -> bytes:
        framing = f"content-length: {len(body)}\r\n" if body else ""
        return (f"{method} {path} HTTP/1.1\r\nhost: HOST\r\n{extra}{framing}\r\n").encode() + body

    chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    big_chunks = b"40\r\n" + b"x" * 64 + b"\r\n1\r\ny\r\n0\r\n\r\n"
    return [
        (
            "POST, JSON, a query, repeated headers",
            req(
                "POST",
                f"{PREFIX}/webhook/{echo}?a=1&b=%20x&c=%C3%A9",
                "content-type: application/json\r\nx-dup: one\r\nX-Dup: two\r\n",
                b'{"id": "evt_1"}',
            ),
        ),
        ("GET", req("GET", f"{PREFIX}/webhook/{echo}")),
        ("a response header with a newline", req("PATCH", f"{PREFIX}/webhook/{echo}", body=b"x")),
        ("HEAD", req("HEAD", f"{PREFIX}/webhook/{echo}")),
        ("OPTIONS", req("OPTIONS", f"{PREFIX}/webhook/{echo}")),
        (
            "PUT, chunked",
            req("PUT", f"{PREFIX}/webhook/{echo}", "transfer-encoding: chunked\r\n") + chunked,
        ),
        (
            "a Remote-Addr header from the sender",
            req("POST", f"{PREFIX}/webhook/{echo}", "remote-addr: 10.0.0.1\r\n", b"x"),
        ),
        (
            "HTTP/1.0 without Host",
            f"POST {PREFIX}/webhook/{echo} HTTP/1.0\r\ncontent-length: 2\r\n\r\nhi".encode(),
        ),
        ("the default 202", req("POST", f"{PREFIX}/webhook/{default}", body=b"{}")),
        ("an unknown token", req("POST", f"{PREFIX}/webhook/no-such-token", body=b"{}")),
        ("a token with an escaped slash", req("POST", f"{PREFIX}/webhook/a%2Fb", body=b"{}")),
        ("no token", req("POST", f"{PREFIX}/webhook", body=b"{}")),
        ("no token, a slash", req("POST", f"{PREFIX}/webhook/", body=b"{}")),
        ("a longer word", req("POST", f"{PREFIX}/webhooks/{echo}", body=b"{}")),
        ("over the limit, declared", req("POST", f"{PREFIX}/webhook/{echo}", body=b"x" * 65)),
        (
            "over the limit, chunked",
            req("POST", f"{PREFIX}/webhook/{echo}", "transfer-encoding: chunked\r\n") + big_chunks,
        ),
        ("a method no webhook takes", req("PROPFIND", f"{PREFIX}/webhook/{echo}")),
    ]


async def test_the_asgi_route_and_the_quart_view_answer_alike(
    tmp_path: Path, served: Served, wait_hooks: Callable[..., Any]
) -> None:
    async with af.Runtime(tmp_path / "data", [echoes], durability="none") as rt:
        run = await rt.start(echoes)
        echo, default = await wait_hooks(rt, run.run_id, 2)
        ours = create_app(rt, manage_runtime=False, worker=current_worker(), max_body=MAX_BODY)  # type: ignore[arg-type]
        theirs = _user_app()
        theirs.config["MAX_CONTENT_LENGTH"] = MAX_BODY
        theirs.register_blueprint(create_blueprint(rt, max_body=MAX_BODY, manage_runtime=False))
        async with served(rt, app=ours) as ours_client, served(rt, app=theirs) as theirs_client:
            urls = {"asgi": str(ours_client.base_url), "view": str(theirs_client.base_url)}
            for name, raw in _requests(echo, default):
                answers = {}
                for way, url in urls.items():
                    host = url.removeprefix("http://").rstrip("/")
                    status, headers, body = await _exchange(
                        url, raw.replace(b"HOST", host.encode())
                    )
                    answers[way] = (status, headers, body.replace(host.encode(), b"HOST"))
                if name == "over the limit, chunked":
                    # Under the view, Quart (not QuartTrio) refuses the body before the view
                    # counts it, with its own wording; the ASGI route names the limit.
                    assert answers["asgi"][0] == answers["view"][0], name
                    assert b"over the limit of 64 bytes" in answers["asgi"][2], answers
                    continue
                if name in FALL_THROUGH:
                    # Quart's routing answers in both; only create_app's error handler differs.
                    assert answers["asgi"][0] == answers["view"][0], name
                    continue
                assert answers["asgi"] == answers["view"], name
                if name.startswith("POST, JSON"):
                    status, headers, body = answers["asgi"]
                    assert status.startswith(b"HTTP/1.1 201"), answers
                    seen = orjson.loads(body)
                    assert seen["url"] == f"http://HOST{PREFIX}/webhook/{echo}?a=1&b=%20x&c=é"
                    assert seen["headers"]["x-dup"] == "one, two"
                    assert seen["body"] == '{"id": "evt_1"}'
                    assert headers[b"x-seen"] == [b"yes"]
                if name == "a response header with a newline":
                    assert answers["asgi"][0].startswith(b"HTTP/1.1 500"), answers
                    assert b"one" not in answers["asgi"][2], answers
                if name.startswith("over the limit"):
                    assert answers["asgi"][0].startswith(b"HTTP/1.1 413"), answers
                if name in ("an unknown token", "no token", "no token, a slash"):
                    assert answers["asgi"][0].startswith(b"HTTP/1.1 404"), answers
