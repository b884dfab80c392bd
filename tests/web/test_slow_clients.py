"""Slow and idle clients against a real ``actorflow serve`` process (fsync on).

3,000 connections each send a request head announcing a 100,000-byte webhook body, then 2 bytes
of it, and stall (a tenth of them stall inside the head instead). Meanwhile the server keeps
answering ``/healthz`` and webhooks; every stalled connection is closed by the server after its
timeout (a stalled body gets ``408`` first); and the server's file descriptors, counted in
``/proc/PID/fd``, come back to what they were before. Then ``--max-connections``: one
connection past the limit is answered ``503`` at once, and the server takes new connections
again when the stalled ones are gone.
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
import time
from pathlib import Path

import anyio
import httpx
import pytest
from tests.conftest import wait_until
from tests.fixtures.reliability_app import parked
from tests.fixtures.server_process import ServerProcess

import actorflow as af

PREFIX = "/.well-known/workflow/v1"

STALLED = 3_000
#: Every HEAD_EVERY-th stalled connection stops inside its request head.
HEAD_EVERY = 10
READ_TIMEOUT = 3.0
KEEP_ALIVE_TIMEOUT = 3.0
#: How long after the last stalled connection opened they must all be closed: the timeout,
#: plus room for a loaded 2-core machine to answer 3,000 of them.
CLOSE_WITHIN = max(READ_TIMEOUT, KEEP_ALIVE_TIMEOUT) + 30.0


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} file descriptors; the hard limit here is {hard}")
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else hard, hard)
        )


def _park_one(data_dir: Path) -> str:
    """Start one run of ``parked`` (a webhook counting requests); its webhook token."""

    async def go() -> str:
        async with af.Runtime(data_dir, [parked]) as rt:
            await rt.start(parked)
            await wait_until(lambda: len(rt.state.tokens) == 1)
            await rt.wait_idle()
            return next(iter(rt.state.tokens))

    return anyio.run(go, backend="asyncio")


def _fds(server: ServerProcess) -> int:
    assert server.proc is not None
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def _stall(address: tuple[str, int], token: str, i: int) -> socket.socket:
    """A connection that sends part of a request and then nothing."""
    sock = socket.create_connection(address, timeout=30)
    if i % HEAD_EVERY == 0:
        sock.sendall(f"POST {PREFIX}/webhook/{token} HTTP/1.1\r\nhost: x\r\n".encode())
    else:
        sock.sendall(
            f"POST {PREFIX}/webhook/{token} HTTP/1.1\r\nhost: x\r\n"
            'content-type: application/json\r\ncontent-length: 100000\r\n\r\n{"'.encode()
        )
    sock.setblocking(False)
    return sock


def _wait_closed(socks: list[socket.socket], within: float) -> dict[str, int]:
    """Read every socket until the server closes it; how many ended with what answer."""
    answers: dict[str, int] = {}
    received: dict[socket.socket, bytes] = dict.fromkeys(socks, b"")
    deadline = time.monotonic() + within
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while received and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                except BlockingIOError:
                    continue
                if data:
                    received[sock] += data
                    continue
                head = received.pop(sock).split(b"\r\n", 1)[0].decode(errors="replace")
                answers[head or "closed without an answer"] = (
                    answers.get(head or "closed without an answer", 0) + 1
                )
                selector.unregister(sock)
                sock.close()
    assert not received, f"{len(received)} stalled connections still open after {within:.0f} s"
    return answers


def _timed(client: httpx.Client, method: str, path: str, **kwargs: object) -> tuple[int, float]:
    began = time.monotonic()
    response = client.request(method, path, **kwargs)  # type: ignore[arg-type]
    return response.status_code, time.monotonic() - began


@pytest.mark.parametrize("worker", ["asyncio", "trio"])
def test_stalled_connections_are_closed_and_the_server_keeps_answering(
    tmp_path: Path, worker: str
) -> None:
    _raise_fd_limit(STALLED + 1_024)
    token = _park_one(tmp_path / "data")
    server = ServerProcess(
        tmp_path / "data",
        tmp_path / "server.log",
        extra=(
            *("--read-timeout", str(READ_TIMEOUT)),
            *("--keep-alive-timeout", str(KEEP_ALIVE_TIMEOUT)),
        ),
    )
    base = server.start(worker)
    host, _, port = base.removeprefix("http://").rpartition(":")
    address = (host, int(port))
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            # Warm up (the run is rebuilt on its first request), then the baseline.
            assert client.post(f"{PREFIX}/webhook/{token}", content=b"{}").status_code == 202
            assert client.get("/healthz").status_code == 200
        baseline = _fds(server)

        socks = [_stall(address, token, i) for i in range(STALLED)]
        opened = time.monotonic()
        # The server answers others while it holds them: fresh connections, each request
        # answered long before any stalled connection's timeout.
        answered: list[tuple[int, float]] = []
        with httpx.Client(base_url=base, timeout=30) as client:
            for _ in range(5):
                answered.append(_timed(client, "GET", "/healthz"))
                answered.append(_timed(client, "POST", f"{PREFIX}/webhook/{token}", content=b"{}"))
        assert sorted({status for status, _ in answered}) == [200, 202], answered
        slowest = max(seconds for _, seconds in answered)
        assert slowest < READ_TIMEOUT, f"answers waited {slowest:.2f} s behind the stalled"

        answers = _wait_closed(socks, CLOSE_WITHIN)
        closed_after = time.monotonic() - opened
        heads = STALLED // HEAD_EVERY
        assert answers.get("closed without an answer", 0) == heads, answers
        assert answers.get("HTTP/1.1 408 ", 0) == STALLED - heads, answers

        for _ in range(100):  # the server closes its side as the clients see it closed
            if _fds(server) <= baseline:
                break
            time.sleep(0.1)
        assert _fds(server) <= baseline, f"{_fds(server)} descriptors open, {baseline} before"

        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/healthz").status_code == 200
            assert client.post(f"{PREFIX}/webhook/{token}", content=b"stop").status_code == 202
        assert server.stop() == 0
        print(
            f"{worker}: {STALLED} stalled connections closed within {closed_after:.1f} s "
            f"(timeouts {READ_TIMEOUT:g} s), answers meanwhile in at most {slowest * 1000:.0f} ms, "
            f"descriptors back to {baseline}"
        )
    finally:
        server.kill()
    assert "Traceback" not in server.text(), server.text()[-5000:]


@pytest.mark.parametrize("worker", ["asyncio", "trio"])
def test_a_connection_past_the_limit_is_answered_503_at_once(tmp_path: Path, worker: str) -> None:
    limit = 20
    token = _park_one(tmp_path / "data")
    server = ServerProcess(
        tmp_path / "data",
        tmp_path / "server.log",
        extra=("--read-timeout", str(READ_TIMEOUT), "--max-connections", str(limit)),
    )
    base = server.start(worker)
    host, _, port = base.removeprefix("http://").rpartition(":")
    address = (host, int(port))
    try:
        baseline = _fds(server)
        socks = [_stall(address, token, 1) for _ in range(limit)]  # bodies, not heads
        for _ in range(300):  # until the server has accepted them all
            if _fds(server) >= baseline + limit:
                break
            time.sleep(0.1)
        # One more is answered at once, before it sends anything. (One that had sent its
        # request already may see its 503 reset away: the server does not wait to read it.)
        with socket.create_connection(address, timeout=30) as extra:
            answer = b""
            while chunk := extra.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"retry-after: 1" in answer.lower() and b"ServiceUnavailable" in answer

        answers = _wait_closed(socks, CLOSE_WITHIN)
        assert answers == {"HTTP/1.1 408 ": limit}, answers
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/healthz").status_code == 200
        assert server.stop() == 0
    finally:
        server.kill()
