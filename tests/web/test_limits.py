"""Limits and secrets at the HTTP edge: body size (413), header size (Hypercorn's 431), token
length, tokens with ``/``, ``..``, ``%2F`` and unicode, paths that try to leave the data
directory, the bearer check, the randomness of tokens, and what the server writes to its own
log (never a token, a payload or the resume secret).

The runtime's own limits are checked as a caller meets them over HTTP: a value over
``max_payload_bytes`` is 413 with nothing committed; a run past ``max_hooks_per_run`` live hooks,
past ``max_calls_per_run`` durable calls, or choosing a token over 1,024 characters fails with a
``WorkflowDefinitionError`` that says which limit.
"""

from __future__ import annotations

import inspect
import re
import secrets
import string
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from tests.fixtures.reliability_app import holder, hooker
from tests.fixtures.server_process import SECRET, ServerProcess
from tests.web.conftest import AUTH

import actorflow as af
from actorflow.http import app as app_module
from actorflow.http.responses import UNKNOWN_WEBHOOK_BODY
from actorflow.runtime import ids

PREFIX = "/.well-known/workflow/v1"


async def _run_with_hooks(rt: af.Runtime, token: str, wait_hooks: Any) -> tuple[af.Run, str]:
    """A ``holder`` run owning ``token``; the run and its webhook's token."""
    run = await rt.start(holder, token)
    await wait_hooks(rt, run.run_id, 2)
    [webhook] = [t for t in rt.state.runs[run.run_id].hooks or () if t != token]
    return run, webhook


async def _raw(url: str, data: bytes) -> bytes:
    """Send raw bytes (no client normalises the path); the answer until the server closes it
    or a complete response is in."""
    host, _, port = httpx.URL(url).netloc.decode().rpartition(":")
    out = b""
    async with await anyio.connect_tcp(host, int(port)) as stream:
        try:
            await stream.send(data)
        except (anyio.BrokenResourceError, OSError):
            pass  # it stopped reading: its answer, if any, follows
        with anyio.fail_after(10):
            while True:
                try:
                    out += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    return out
                head, sep, body = out.partition(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
                if sep and length and len(body) >= int(length.group(1)):
                    return out


def _status(answer: bytes) -> int:
    found = re.match(rb"HTTP/1\.1 (\d{3})", answer)
    assert found, answer[:300]
    return int(found.group(1))


# -- body size -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_body_over_max_body_is_413_and_commits_nothing(
    data_dir: Path, served: Any, wait_hooks: Any, log_events: Any
) -> None:
    async with af.Runtime(data_dir, [holder], durability="none") as rt:
        run, webhook = await _run_with_hooks(rt, "big", wait_hooks)
        url = f"{PREFIX}/webhook/{webhook}"
        async with served(rt, max_body=1024) as client:
            declared = await client.post(url, content=b"a" * 1025)
            assert declared.status_code == 413
            assert declared.json()["error"] == "RequestEntityTooLarge"

            async def chunks() -> Any:  # no Content-Length: counted as it arrives
                for _ in range(3):
                    yield b"b" * 600

            streamed = await client.post(url, content=chunks())
            assert streamed.status_code == 413
            resumed = await client.post(
                f"{PREFIX}/hooks/resume",
                headers=AUTH,
                json={"token": "big", "payload": "c" * 2000},
            )
            assert resumed.status_code == 413
            assert (await client.post(url, content=b"d" * 1024)).status_code == 202
        assert len(log_events(rt, run.run_id, "hook_received")) == 1
        await rt.resume_hook("big", "stop")
        assert await run.result(timeout=10) == ["d" * 1024]


@pytest.mark.anyio
async def test_a_value_over_max_payload_bytes_is_413_and_commits_nothing(
    data_dir: Path, served: Any, wait_hooks: Any, log_events: Any
) -> None:
    async with af.Runtime(data_dir, [holder], durability="none", max_payload_bytes=2048) as rt:
        run, webhook = await _run_with_hooks(rt, "sized", wait_hooks)
        async with served(rt) as client:  # max_body stays 1 MiB: the runtime's limit acts
            answers = [
                await client.post(
                    f"{PREFIX}/hooks/resume",
                    headers=AUTH,
                    json={"token": "sized", "payload": "x" * 5000},
                ),
                await client.post(f"{PREFIX}/webhook/{webhook}", content=b"y" * 5000),
                await client.post(
                    f"{PREFIX}/runs",
                    headers=AUTH,
                    json={"workflow": "holder", "args": ["z" * 5000]},
                ),
            ]
            for answer in answers:
                assert answer.status_code == 413, answer.text
                assert answer.json()["error"] == "PayloadTooLargeError"
            fits = await client.post(
                f"{PREFIX}/hooks/resume",
                headers=AUTH,
                json={"token": "sized", "payload": "x" * 100},
            )
            assert fits.status_code == 200
        assert len(rt.state.runs) == 1
        assert len(log_events(rt, run.run_id, "hook_received")) == 1


async def _ended(client: httpx.AsyncClient, workflow: str, *args: Any) -> dict[str, Any]:
    """Start a run over HTTP and wait for it to end; its description."""
    started = await client.post(
        f"{PREFIX}/runs", headers=AUTH, json={"workflow": workflow, "args": list(args)}
    )
    assert started.status_code == 201, started.text
    with anyio.fail_after(10):
        while True:
            run: dict[str, Any] = (
                await client.get(f"{PREFIX}/runs/{started.json()['run_id']}", headers=AUTH)
            ).json()
            if run["status"] not in ("pending", "running"):
                return run
            await anyio.sleep(0.005)


@pytest.mark.anyio
async def test_a_run_past_its_hooks_or_calls_limit_fails_and_says_which(
    data_dir: Path, served: Any
) -> None:
    async with af.Runtime(
        data_dir, [hooker], durability="none", max_hooks_per_run=5, max_calls_per_run=20
    ) as rt:
        async with served(rt) as client:
            assert (await _ended(client, "hooker", 5, False))["status"] == "completed"
            too_many = await _ended(client, "hooker", 6, False)
            assert too_many["status"] == "failed"
            assert too_many["error"]["type"] == "WorkflowDefinitionError"
            assert "max_hooks_per_run" in too_many["error"]["message"]
            # Disposed hooks do not count against the live limit; every call counts.
            assert (await _ended(client, "hooker", 10, True))["status"] == "completed"
            too_long = await _ended(client, "hooker", 11, True)
            assert too_long["status"] == "failed"
            assert too_long["error"]["type"] == "WorkflowDefinitionError"
            assert "max_calls_per_run" in too_long["error"]["message"]


@pytest.mark.anyio
async def test_a_chosen_token_over_1024_characters_fails_the_run(
    data_dir: Path, served: Any, wait_hooks: Any
) -> None:
    async with af.Runtime(data_dir, [holder], durability="none") as rt:
        run, _ = await _run_with_hooks(rt, "k" * 1024, wait_hooks)
        async with served(rt) as client:
            got = await client.get(f"{PREFIX}/hooks/{'k' * 1024}", headers=AUTH)
            assert got.status_code == 200
            refused = await _ended(client, "holder", "k" * 1025)
        assert refused["status"] == "failed"
        assert refused["error"]["type"] == "WorkflowDefinitionError"
        assert "the limit is 1024" in refused["error"]["message"]
        await rt.resume_hook("k" * 1024, "stop")
        assert await run.result(timeout=10) == []


# -- header size ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_header_block_past_hypercorns_limit_is_431(served: Any, data_dir: Path) -> None:
    """Hypercorn's limit is h11's ``max_incomplete_event_size`` (16 KiB): it bounds the bytes
    of a request head that has not ended yet. A head still open past 16 KiB gets ``431``
    (empty body) and the connection is closed. A longer head that arrives whole in one read
    (up to 64 KiB) passes, so the limit is 16 KiB of unfinished head, not of headers."""
    async with af.Runtime(data_dir, [holder], durability="none") as rt:
        async with served(rt) as client:
            url = str(client.base_url)
            fits = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8_000 + b"\r\n\r\n"
            assert _status(await _raw(url, fits)) == 200
            # 17 KB of head and no end yet: over the limit whatever the segmentation.
            unended = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17_000
            answer = await _raw(url, unended)
            assert _status(answer) == 431
            assert answer.endswith(b"\r\n\r\n")  # no body
            many = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 40) for i in range(600))
            assert _status(await _raw(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many)) == 431
            huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
            answer = await _raw(url, huge)
            assert answer == b"" or _status(answer) == 431  # refused, never served
            assert (await client.get("/healthz")).status_code == 200


# -- tokens --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_10kb_token_is_404_with_the_same_body_as_any_unknown_token(
    data_dir: Path, served: Any, wait_hooks: Any
) -> None:
    long_token = "k" * 10_240
    async with af.Runtime(data_dir, [holder], durability="none") as rt:
        await _run_with_hooks(rt, "plain", wait_hooks)
        async with served(rt) as client:
            bodies = set()
            for token in (long_token, "short-unknown", "plain"):
                for method in ("GET", "POST"):
                    answer = await client.request(method, f"{PREFIX}/webhook/{token}")
                    assert answer.status_code == 404
                    bodies.add(answer.content)
            assert bodies == {UNKNOWN_WEBHOOK_BODY}
            got = await client.get(f"{PREFIX}/hooks/{long_token}", headers=AUTH)
            assert (got.status_code, got.json()["error"]) == (404, "HookNotFoundError")
            resumed = await client.post(
                f"{PREFIX}/hooks/resume", headers=AUTH, json={"token": long_token, "payload": 1}
            )
            assert (resumed.status_code, resumed.json()["error"]) == (404, "HookNotFoundError")


#: Chosen tokens the routes must carry exactly, whether percent-encoded or not.
ODD_TOKENS = ["a/b", "../x", "..", ".", "%2F", "a%2Fb", "é/🦀", "a b", "x?y#z", "trail/", "a//b"]


def _encoded(token: str, *, slashes: bool) -> str:
    # quote() leaves "." alone, and a client (httpx) would resolve "..": encode dots too.
    return quote(token, safe="/" if slashes else "").replace(".", "%2E")


@pytest.mark.anyio
async def test_tokens_with_slashes_dots_percent_and_unicode_reach_their_own_hook(
    data_dir: Path, served: Any, wait_hooks: Any
) -> None:
    async with af.Runtime(data_dir, [holder], durability="none") as rt:
        runs = {token: (await _run_with_hooks(rt, token, wait_hooks))[0] for token in ODD_TOKENS}
        async with served(rt) as client:
            for token in ODD_TOKENS:
                for slashes in (False, True):
                    got = await client.get(
                        f"{PREFIX}/hooks/{_encoded(token, slashes=slashes)}", headers=AUTH
                    )
                    assert got.status_code == 200, (token, slashes, got.text)
                    assert got.json()["token"] == token
                    assert got.json()["run_id"] == runs[token].run_id
                resumed = await client.post(
                    f"{PREFIX}/hooks/resume",
                    headers=AUTH,
                    json={"token": token, "payload": f"for {token}"},
                )
                assert resumed.status_code == 200, (token, resumed.text)
                assert resumed.json()["run_id"] == runs[token].run_id
                # A plain hook's token on the public route: the one 404.
                webhook = await client.post(f"{PREFIX}/webhook/{_encoded(token, slashes=False)}")
                assert (webhook.status_code, webhook.content) == (404, UNKNOWN_WEBHOOK_BODY)
            # Unencoded dot segments are not resolved: "hooks/../x" is the token "../x".
            raw = await _raw(
                str(client.base_url),
                f"GET {PREFIX}/hooks/../x HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {SECRET_IN_APP}\r\n\r\n".encode(),
            )
            assert _status(raw) == 200 and b'"token":"../x"' in raw
        for token, run in runs.items():
            await rt.resume_hook(token, "stop")
            assert await run.result(timeout=10) == [f"for {token}"]


#: The secret tests/web/conftest.py's ``served`` sets.
SECRET_IN_APP = AUTH["authorization"].removeprefix("Bearer ")


@pytest.mark.anyio
async def test_a_token_that_starts_with_a_slash_reaches_its_own_hook(
    data_dir: Path, served: Any, wait_hooks: Any
) -> None:
    async with af.Runtime(data_dir, [holder], durability="none") as rt:
        run, _ = await _run_with_hooks(rt, "/lead", wait_hooks)
        async with served(rt) as client:
            unknown = await client.post(f"{PREFIX}/webhook/%2Fnot-a-token")
            got = await client.get(f"{PREFIX}/hooks/%2Flead", headers=AUTH)
        await rt.resume_hook("/lead", "stop")
        await run.result(timeout=10)
    assert (unknown.status_code, unknown.content) == (404, UNKNOWN_WEBHOOK_BODY)
    assert got.status_code == 200, got.headers
    assert got.json()["token"] == "/lead"


def test_random_tokens_come_from_secrets_with_at_least_128_bits() -> None:
    assert "secrets." in inspect.getsource(ids.new_token)
    tokens = {ids.new_token() for _ in range(10_000)}
    assert len(tokens) == 10_000
    alphabet = set(string.ascii_letters + string.digits + "-_")
    for token in tokens:
        assert set(token) <= alphabet
        assert len(token) * 6 >= 128  # base64url: 6 bits a character


# -- paths that try to leave the data directory --------------------------------------------------


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_run_ids_and_tokens_cannot_escape_the_data_directory(tmp_path: Path) -> None:
    """Ids and tokens never name files: the log is one set of segments, so a run id or token
    full of ``..`` finds nothing, reads nothing and writes nothing outside the data dir."""
    (tmp_path / "cwd").mkdir()
    (tmp_path / "outside.txt").write_text("outside-file-content")
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", cwd=tmp_path / "cwd")
    url = server.start("asyncio")
    before = _tree(tmp_path)
    escapes = [
        "../../../../../../etc/passwd",
        "..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "%2E%2E%2F%2E%2E%2F%2E%2E%2Foutside.txt",
        "../outside.txt",
        "..\\..\\outside.txt",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "....//....//etc/passwd",
        "..%00/passwd",
    ]
    auth = f"Authorization: Bearer {SECRET}\r\n"

    async def probe() -> list[tuple[str, int, bytes]]:
        seen = []
        for escape in escapes:
            for method, path, body in (
                ("GET", f"runs/{escape}", b""),
                ("POST", f"runs/{escape}/cancel", b""),
                ("GET", f"hooks/{escape}", b""),
                ("POST", f"webhook/{escape}", b"payload"),
            ):
                head = (
                    f"{method} {PREFIX}/{path} HTTP/1.1\r\nHost: x\r\n{auth}"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                answer = await _raw(url, head.encode() + body)
                seen.append((f"{method} {path}", _status(answer), answer))
        async with httpx.AsyncClient(
            base_url=url, headers={"authorization": f"Bearer {SECRET}"}
        ) as client:
            for escape in escapes:
                resumed = await client.post(
                    f"{PREFIX}/hooks/resume", json={"token": escape, "payload": "x"}
                )
                seen.append((f"resume {escape}", resumed.status_code, resumed.content))
            # A run may even own such a token: it is a key in memory, never a path.
            started = await client.post(
                f"{PREFIX}/runs", json={"workflow": "holder", "args": ["../../escaped"]}
            )
            run_id = started.json()["run_id"]
            for _ in range(1000):
                hooks = (await client.get(f"{PREFIX}/runs/{run_id}")).json()["hooks"]
                if hooks:
                    break
                await anyio.sleep(0.01)
            resumed = await client.post(
                f"{PREFIX}/hooks/resume", json={"token": "../../escaped", "payload": "stop"}
            )
            assert resumed.status_code == 200
        return seen

    try:
        seen = anyio.run(probe, backend="asyncio")
    finally:
        assert server.stop() == 0, server.text()[-3000:]
    for what, status, answer in seen:
        assert status in (404, 405), (what, status, answer[:300])
        assert b"root:" not in answer and b"outside-file-content" not in answer, what
    created = _tree(tmp_path) - before
    assert all(path.startswith("data") for path in created), created
    assert _tree(tmp_path / "cwd") == set()
    assert "escaped" not in " ".join(_tree(tmp_path))


# -- the bearer check ----------------------------------------------------------------------------


def test_the_bearer_secret_is_compared_with_hmac_compare_digest() -> None:
    source = inspect.getsource(app_module._Edge._authorize)
    assert "hmac.compare_digest(" in source
    assert "==" not in source.replace('!= "bearer"', "")


@pytest.mark.anyio
async def test_wrong_secrets_of_the_same_length_are_401(data_dir: Path, served: Any) -> None:
    secret = SECRET_IN_APP
    flip = {"a": "b"}
    wrong = [
        "x" + secret[1:],  # first character
        secret[:-1] + ("x" if secret[-1] != "x" else "y"),  # last character
        secret[: len(secret) // 2] + "".join(flip.get(c, "a") for c in secret[len(secret) // 2 :]),
        "".join("x" for _ in secret),  # every character
        secret.upper(),
    ]
    async with af.Runtime(data_dir, [holder], durability="none") as rt:
        async with served(rt) as client:
            for bad in wrong:
                assert len(bad) == len(secret) and bad != secret
                for route in (f"{PREFIX}/hooks/nothing", f"{PREFIX}/runs/wrun_0"):
                    answer = await client.get(route, headers={"authorization": f"Bearer {bad}"})
                    assert answer.status_code == 401, bad
                    assert answer.headers["www-authenticate"] == "Bearer"
            for bad in ("-", secret[:-1], secret + "x", secret * 2):
                answer = await client.get(
                    f"{PREFIX}/hooks/nothing", headers={"authorization": f"Bearer {bad}"}
                )
                assert answer.status_code == 401
            right = await client.get(f"{PREFIX}/hooks/nothing", headers=AUTH)
            assert right.status_code == 404  # past the check: the hook just does not exist


# -- the server's own log ------------------------------------------------------------------------


def test_the_servers_log_holds_no_token_payload_or_secret(tmp_path: Path) -> None:
    """Everything a request can carry, through success and error paths, with a marker in it;
    the server logs at INFO (``actorflow serve``'s level) and the marker never appears."""
    marker = f"MARK{secrets.token_hex(8)}"
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    url = server.start("asyncio")
    token = f"tok-{marker}"

    def wait_for_hooks(client: httpx.Client, run_id: str, count: int) -> list[dict[str, Any]]:
        for _ in range(1000):
            run = client.get(f"{PREFIX}/runs/{run_id}").json()
            if len(run["hooks"]) >= count or run["status"] != "running":
                return list(run["hooks"])
            time.sleep(0.01)
        raise AssertionError(run)

    try:
        with httpx.Client(
            base_url=url, headers={"authorization": f"Bearer {SECRET}"}, timeout=10
        ) as client:
            run_id = client.post(
                f"{PREFIX}/runs", json={"workflow": "holder", "args": [token]}
            ).json()["run_id"]
            hooks = wait_for_hooks(client, run_id, 2)
            webhook_path = httpx.URL([h for h in hooks if h["is_webhook"]][0]["url"]).path
            payload = {"secret": marker, "nested": [marker]}
            resume = {"token": token, "payload": payload, "idempotency_key": f"key-{marker}"}
            assert client.post(f"{PREFIX}/hooks/resume", json=resume).status_code == 200
            assert client.post(f"{PREFIX}/hooks/resume", json=resume).status_code == 200
            conflict = {**resume, "payload": marker}
            assert client.post(f"{PREFIX}/hooks/resume", json=conflict).status_code == 409
            assert client.get(f"{PREFIX}/hooks/{token}").status_code == 200
            delivered = httpx.post(
                f"{url}{webhook_path}?q={marker}",
                content=f"body {marker}".encode(),
                headers={"x-marker": marker, "idempotency-key": marker},
            )
            assert delivered.status_code == 202
            # Error paths, each with the marker somewhere in the request.
            assert httpx.post(f"{url}{PREFIX}/webhook/{marker}").status_code == 404
            assert client.get(f"{PREFIX}/hooks/unknown-{marker}").status_code == 404
            assert (
                client.post(
                    f"{PREFIX}/hooks/resume", json={"token": marker, "payload": marker}
                ).status_code
                == 404
            )
            bad_json = client.post(
                f"{PREFIX}/hooks/resume",
                content=f'{{"token": "{marker}", '.encode(),
                headers={"content-type": "application/json"},
            )
            assert bad_json.status_code == 400
            too_big = httpx.post(f"{url}{webhook_path}", content=marker.encode() * 100_000)
            assert too_big.status_code == 413
            wrong_bearer = httpx.get(
                f"{url}{PREFIX}/hooks/{token}", headers={"authorization": f"Bearer {marker}"}
            )
            assert wrong_bearer.status_code == 401
            # Runs that fail: a token that is not a string, a token another run holds.
            failing = client.post(
                f"{PREFIX}/runs", json={"workflow": "holder", "args": [{"token": marker}]}
            ).json()["run_id"]
            conflicting = client.post(
                f"{PREFIX}/runs", json={"workflow": "holder", "args": [token]}
            ).json()["run_id"]
            cancelled = client.post(
                f"{PREFIX}/runs", json={"workflow": "holder", "args": [f"other-{marker}"]}
            ).json()["run_id"]
            wait_for_hooks(client, cancelled, 2)
            client.post(f"{PREFIX}/runs/{cancelled}/cancel", json={"reason": marker})
            assert (
                client.post(
                    f"{PREFIX}/hooks/resume", json={"token": token, "payload": "stop"}
                ).status_code
                == 200
            )
            for rid, status in (
                (run_id, "completed"),
                (failing, "failed"),
                (conflicting, "failed"),
                (cancelled, "cancelled"),
            ):
                for _ in range(1000):
                    run = client.get(f"{PREFIX}/runs/{rid}").json()
                    if run["status"] not in ("pending", "running"):
                        break
                    time.sleep(0.01)
                assert run["status"] == status, run
            assert marker in str(client.get(f"{PREFIX}/runs/{run_id}").json()["result"])
    finally:
        code = server.stop()
    output = server.text()
    assert code == 0, output[-3000:]
    assert "serving" in output and "INFO" in output  # the log was on, at INFO
    assert marker not in output, [line for line in output.splitlines() if marker in line]
    assert SECRET not in output
