"""A run's stream over HTTP (Server-Sent Events) and the wake-up route, on a real Hypercorn.

Each test runs on the asyncio worker and the trio worker; fsync on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import h11
import httpx
import orjson
import pytest
from tests.conftest import resume_when_ready, wait_until
from tests.web.conftest import AUTH, PREFIX

import actorflow as af

pytestmark = pytest.mark.anyio


@af.workflow
async def reporter(count: int) -> str:
    """Streams ``count`` progress chunks, one per hook payload after the first ``count // 2``."""
    out = af.get_writable("progress")
    hook = af.create_hook(token="more")
    for i in range(count):
        if i == count // 2:
            await hook
        await out.write({"id": i} if i % 3 else f"text {i}\nline two" if i % 2 else b"\x00\xff")
    await out.close()
    return "done"


@af.workflow
async def napper() -> str:
    await af.sleep("7d")
    return "woke"


def expected(count: int) -> list[Any]:
    return [{"id": i} if i % 3 else f"text {i}\nline two" if i % 2 else {"$bytes": "AP8="}
            for i in range(count)]  # fmt: skip


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[af.Runtime]:
    async with af.Runtime(tmp_path, [reporter, napper]) as runtime:
        yield runtime


class Sse:
    """A bare SSE client over one TCP connection (h11 for the HTTP framing): reading part of a
    stream and hanging up is what these tests do, and an abandoned httpx stream leaves async
    generators for the garbage collector, which the suite's warnings-as-errors refuses."""

    def __init__(self, base_url: str, path: str, headers: dict[str, str]) -> None:
        url = httpx.URL(base_url)
        self.host, self.port = str(url.host), int(url.port or 80)
        self.path = path
        self.headers = headers
        self.conn = h11.Connection(h11.CLIENT)
        self.status = 0
        self.content_type = ""
        self._pending = b""
        self._stream: anyio.abc.SocketStream | None = None

    async def __aenter__(self) -> Sse:
        self._stream = await anyio.connect_tcp(self.host, self.port)
        request = h11.Request(
            method="GET",
            target=self.path,
            headers=[("host", f"{self.host}:{self.port}"), *self.headers.items()],
        )
        await self._stream.send(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))
        while True:
            event = await self._next_h11()
            if isinstance(event, h11.Response):
                self.status = event.status_code
                self.content_type = dict(event.headers).get(b"content-type", b"").decode()
                return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._stream is not None
        await self._stream.aclose()

    async def _next_h11(self) -> Any:
        assert self._stream is not None
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self._stream.receive()
                except anyio.EndOfStream:
                    data = b""
                self.conn.receive_data(data)
                continue
            return event

    async def event(self) -> dict[str, str] | None:
        """The next SSE event as ``{"id"?, "event", "data"}`` (``None``: the response ended)."""
        while b"\n\n" not in self._pending:
            got = await self._next_h11()
            if isinstance(got, h11.Data):
                self._pending += bytes(got.data)
            elif isinstance(got, h11.EndOfMessage | h11.ConnectionClosed):
                return None
        block, self._pending = self._pending.split(b"\n\n", 1)
        fields = {}
        for line in block.decode().split("\n"):
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        return fields if fields else await self.event()

    async def chunks(self, limit: int | None = None) -> list[tuple[int, Any]]:
        """Chunks until ``limit`` of them, the end event, or the response's end."""
        out: list[tuple[int, Any]] = []
        while limit is None or len(out) < limit:
            event = await self.event()
            if event is None or event.get("event") == "end":
                break
            if event.get("event") == "chunk":
                out.append((int(event["id"]), orjson.loads(event["data"])))
        return out


async def test_a_stream_arrives_as_server_sent_events(rt: af.Runtime, served: Any) -> None:
    run = await rt.start(reporter, 10)
    url = f"{PREFIX}/runs/{run.run_id}/streams/progress"
    async with served(rt) as client:
        events = []
        with anyio.fail_after(20):
            async with Sse(str(client.base_url), url, AUTH) as response:
                assert response.status == 200
                assert response.content_type.startswith("text/event-stream")
                while (event := await response.event()) is not None:
                    events.append(event)
                    if event.get("id") == "4":
                        await resume_when_ready(rt, "more", None)
    assert events[0] == {"retry": "1000"}
    chunks = [e for e in events[1:] if e["event"] == "chunk"]
    assert [int(e["id"]) for e in chunks] == list(range(10))
    assert [orjson.loads(e["data"]) for e in chunks] == expected(10)
    assert events[-1] == {"event": "end", "data": '{"reason":"closed","next":10}'}


async def test_a_client_reconnects_without_gap_or_repeat(rt: af.Runtime, served: Any) -> None:
    run = await rt.start(reporter, 12)
    url = f"{PREFIX}/runs/{run.run_id}/streams/progress"
    async with served(rt) as client:
        base = str(client.base_url)
        with anyio.fail_after(20):
            async with Sse(base, url, AUTH) as response:
                got = await response.chunks(3)  # then the connection drops
            # By ?start=N ...
            async with Sse(base, f"{url}?start={got[-1][0] + 1}", AUTH) as response:
                got += await response.chunks(3)
            await resume_when_ready(rt, "more", None)
            # ... and as a browser's EventSource does, by Last-Event-ID.
            async with Sse(base, url, {**AUTH, "last-event-id": str(got[-1][0])}) as response:
                got += await response.chunks()
    assert got == list(enumerate(expected(12)))


async def test_the_stream_route_refuses_what_it_must(rt: af.Runtime, served: Any) -> None:
    run = await rt.start(napper)
    url = f"{PREFIX}/runs/{run.run_id}/streams/default"
    async with served(rt) as client:
        no_auth = await client.get(url)
        unknown = await client.get(f"{PREFIX}/runs/wrun_nope/streams/default", headers=AUTH)
        bad_start = await client.get(f"{url}?start=-1", headers=AUTH)
        bad_name = await client.get(f"{PREFIX}/runs/{run.run_id}/streams/a%20b", headers=AUTH)
    assert no_auth.status_code == 401
    assert unknown.status_code == 404 and unknown.json()["error"] == "WorkflowRunNotFoundError"
    assert bad_start.status_code == 400 and "start" in bad_start.json()["message"]
    assert bad_name.status_code == 400 and "namespace" in bad_name.json()["message"]


async def test_wake_up_fires_a_pending_sleep(rt: af.Runtime, served: Any) -> None:
    run = await rt.start(napper)
    await wait_until(lambda: len(rt.state.timers) == 1)
    (wait_id,) = rt.state.timers
    async with served(rt) as client:
        none = await client.post(
            f"{PREFIX}/runs/{run.run_id}/wake-up", headers=AUTH, json={"correlation_ids": ["x"]}
        )
        woken = await client.post(f"{PREFIX}/runs/{run.run_id}/wake-up", headers=AUTH)
        unknown = await client.post(f"{PREFIX}/runs/wrun_nope/wake-up", headers=AUTH)
        bad = await client.post(
            f"{PREFIX}/runs/{run.run_id}/wake-up", headers=AUTH, json={"correlation_ids": 3}
        )
    assert none.json() == {"run_id": run.run_id, "woken": []}
    assert woken.status_code == 200
    assert woken.json() == {"run_id": run.run_id, "woken": [wait_id]}
    assert unknown.status_code == 404
    assert bad.status_code == 400
    assert await run.result(timeout=10) == "woke"
