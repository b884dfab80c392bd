"""Hostile input: every operation of the app's own OpenAPI document, fuzzed with hypothesis
against a real ``actorflow serve`` (Hypercorn on 127.0.0.1, port 0, each worker in turn).

Requests go out as raw bytes on a fresh socket, so nothing a client library would refuse is out
of reach: any method, percent-encoded and raw path parameters (``/``, ``..``, ``%2F``, NUL,
unicode, 10 KB), random and missing headers (authorization, content type, content encoding,
transfer encoding), bodies built from the operation's schema or from random JSON, random bytes,
invalid UTF-8, UTF-16, deep nesting, and requests that are not HTTP at all.

Every answer must be below 500 and free of traceback text; a well-formed request to a documented
operation must get a status its document lists, and an error body in the documented form. At the
end the server's own output must hold no traceback either.
"""

from __future__ import annotations

import json
import re
import socket
import string
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import h11
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.fixtures.reliability_app import holder
from tests.fixtures.server_process import SECRET, ServerProcess
from tests.web.conftest import AUTH

import actorflow as af
from actorflow.http.openapi import openapi_document

PREFIX = "/.well-known/workflow/v1"
DOCUMENT = openapi_document(resume_routes=True)
OPERATIONS = [
    (path, method, operation)
    for path, methods in DOCUMENT["paths"].items()
    for method, operation in methods.items()
]
CASES_PER_OPERATION = 200
CASES_RAW = 300
TRACEBACK = re.compile(rb"Traceback \(most recent call last\)|File \"/|\.py\", line \d+")

#: Fuzz cases run, by test (printed at the end of each).
counted: Counter[str] = Counter()


class Target:
    """The served process, and live ids the fuzzer mixes in (so success paths are hit too)."""

    def __init__(self, server: ServerProcess, url: str) -> None:
        self.server = server
        host, _, port = url.removeprefix("http://").rpartition(":")
        self.address = (host, int(port))
        auth = {"authorization": f"Bearer {SECRET}"}
        self.hook_tokens: list[str] = []
        self.webhook_tokens: list[str] = []
        self.run_ids: list[str] = []
        with httpx.Client(base_url=url, headers=auth, timeout=10) as client:
            for i in range(3):
                token = f"fuzz:{i}"
                run_id = client.post(
                    f"{PREFIX}/runs", json={"workflow": "holder", "args": [token]}
                ).json()["run_id"]
                hooks: list[dict[str, Any]] = []
                for _ in range(500):
                    hooks = client.get(f"{PREFIX}/runs/{run_id}").json()["hooks"]
                    if len(hooks) == 2:
                        break
                self.run_ids.append(run_id)
                self.hook_tokens.append(token)
                self.webhook_tokens += [h["token"] for h in hooks if h["is_webhook"]]
            # A run whose stream is closed: a valid stream request gets its chunks and ends
            # (a live run's stream would stay open, and the fuzzer reads answers to the end).
            self.streamed_run_ids = [
                client.post(
                    f"{PREFIX}/runs", json={"workflow": "speller", "args": ["fuzz", 3]}
                ).json()["run_id"]
            ]
            for _ in range(500):
                if client.get(f"{PREFIX}/runs/{self.streamed_run_ids[0]}").json()["status"] == (
                    "completed"
                ):
                    break
        assert len(self.webhook_tokens) == 3

    def send(self, raw: bytes, *, head: bool = False, half_close: bool = False) -> Answer | None:
        """Send ``raw`` on a new connection; the server's answer, or ``None`` if it closed the
        connection without one. The answer is parsed by its own framing: Hypercorn's trio
        worker keeps the connection open after a ``Connection: close`` request (hypercorn
        issue 330), so reading until the server closes would wait for its idle timeout."""
        parser = h11.Connection(h11.CLIENT)
        parser.send(
            h11.Request(method="HEAD" if head else "GET", target="/", headers=[("host", "x")])
        )
        parser.send(h11.EndOfMessage())
        status, body = 0, bytearray()
        headers: dict[str, str] = {}
        with socket.create_connection(self.address, timeout=5) as sock:
            try:
                sock.sendall(raw)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server may close on a bad request before reading it all
            while True:
                try:
                    event = parser.next_event()
                except h11.RemoteProtocolError:
                    # Cut short: Hypercorn drops a response when the client half-closes.
                    assert half_close and status, (raw[:300], status, bytes(body))
                    return Answer(status, headers, bytes(body))
                if event is h11.NEED_DATA:
                    try:
                        data = sock.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    except TimeoutError:
                        raise AssertionError(f"no answer within 5s to {raw[:300]!r}") from None
                    if not data and status == 0:
                        return None
                    parser.receive_data(data)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode(): v.decode("latin-1") for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return Answer(status, headers, bytes(body))


class Answer:
    """A parsed response."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    server = ServerProcess(tmp / "data", tmp / "server.log")
    url = server.start(request.param)
    try:
        served = httpx.get(f"{url}{PREFIX}/openapi.json", timeout=10).json()
        assert served == json.loads(json.dumps(DOCUMENT))  # the document fuzzed is the served one
        yield Target(server, url)
    finally:
        code = server.stop()
    output = server.text()
    assert code == 0, output[-5000:]
    assert not TRACEBACK.search(output.encode()), output[-5000:]
    assert " ERROR " not in output, output[-5000:]


# -- strategies ----------------------------------------------------------------------------------

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
odd_methods = st.sampled_from(["PROPFIND", "FOO", "get", "CONNECT", "M" * 300, "GET\x00"])
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
#: Arguments each served workflow can bind (any types: a wrong type fails the run, cleanly).
WELL_FORMED_ARGS = {
    "holder": st.lists(json_values, min_size=1, max_size=1),
    "parked": st.just([]),
    "hooker": st.tuples(st.integers(-3, 20), st.booleans()).map(list),
}
weird_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["..", "../..", "../../etc/passwd", "a/b", "%2F", "%2e%2e%2f", "\x00", "é", "🦀", " ", ""]
    ),
    st.text(alphabet=string.printable, min_size=2000, max_size=10_000),
)


def _schema_value(draw: st.DrawFn, schema: dict[str, Any]) -> Any:
    """A value for a (small) schema: often right, sometimes of the wrong type."""
    if "$ref" in schema:
        schema = DOCUMENT["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # the wrong type, on purpose
    kind = schema.get("type")
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        out = {}
        for name, sub in props.items():
            if name in schema.get("required", ()) or draw(st.booleans()):
                out[name] = _schema_value(draw, sub)
        return out
    if kind == "array":
        return draw(st.lists(json_values, max_size=4))
    if kind == "string":
        return draw(st.text(max_size=30) | weird_text)
    return draw(json_values)


@st.composite
def bodies(draw: st.DrawFn, operation: dict[str, Any]) -> tuple[bytes, str | None]:
    """A body and the content type to declare (``None``: no Content-Type header)."""
    schema = (
        operation.get("requestBody", {})
        .get("content", {})
        .get("application/json", {})
        .get("schema")
    )
    choice = draw(st.integers(0, 9))
    if schema is not None and choice <= 3:
        value = _schema_value(draw, schema)
        if schema.get("$ref", "").endswith("ResumeHook") and isinstance(value, dict):
            value["token"] = draw(st.sampled_from(["fuzz:0", "fuzz:1", "fuzz:2"]) | weird_text)
        if schema.get("$ref", "").endswith("StartRun") and isinstance(value, dict):
            value["workflow"] = draw(st.sampled_from(["holder", "parked", "hooker", "nope"]))
            if value["workflow"] in WELL_FORMED_ARGS and draw(st.booleans()):
                # Half the time arguments that bind, so runs really start; otherwise whatever
                # the schema gave (400 when they do not fit the function).
                value["args"] = draw(WELL_FORMED_ARGS[value["workflow"]])
                value.pop("kwargs", None)
        body = json.dumps(value, allow_nan=True).encode()
    elif choice == 4:
        body = json.dumps(draw(json_values), allow_nan=True).encode()
    elif choice == 5:
        body = draw(st.binary(max_size=300))
    elif choice == 6:  # invalid UTF-8 inside JSON-looking bytes
        body = b'{"token": "\xff\xfe", "payload": "\xc3\x28"}'
    elif choice == 7:
        depth = draw(st.integers(100, 5000))
        body = b"[" * depth + b"]" * depth
    elif choice == 8:
        body = json.dumps({"token": "fuzz:0", "payload": draw(json_values)}).encode("utf-16")
    else:
        body = b""
    content_type = draw(
        st.sampled_from(
            [
                "application/json",
                "application/json",
                "application/json",
                "application/json",
                "application/json; charset=utf-8",
                "application/json; charset=utf-16",
                "application/vnd.foo+json",
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/json\x7f",
                "",
            ]
        )
        | st.none()
    )
    return body, content_type


@st.composite
def requests(
    draw: st.DrawFn, target: Target, path: str, method: str, operation: dict[str, Any]
) -> tuple[bytes, bool]:
    """A raw request for one operation; and whether it is a well-formed call of it."""
    proper = True
    verb = method.upper()
    if draw(st.integers(0, 9)) == 0:
        verb = draw(st.sampled_from(METHODS) | odd_methods)
        proper = verb == method.upper()
    hooks = target.hook_tokens
    live = {
        "token": target.webhook_tokens if path.endswith("/webhook/{token}") else hooks,
        "run_id": target.streamed_run_ids if "/streams/" in path else target.run_ids,
        "namespace": ["step", "default"],
    }
    url = path
    for name in re.findall(r"{(\w+)}", path):
        value = draw(st.sampled_from(live[name]) if draw(st.booleans()) else weird_text)
        encoded = quote(value, safe=draw(st.sampled_from(["", "/", "/%"])))
        if not encoded or len(encoded) > 8000 or (name == "run_id" and "/" in unquote(encoded)):
            proper = False  # another route, or none: 404 or 405, not this operation's answer
        url = url.replace(f"{{{name}}}", encoded)
    if draw(st.integers(0, 9)) == 0:
        suffix = draw(st.sampled_from(["?a=1&a=2", "?%zz", "?" + "q" * 3000, "#frag", "/", "//"]))
        url += suffix
        proper = proper and suffix.startswith("?")
    headers: list[tuple[str, str]] = [("Host", "127.0.0.1"), ("Connection", "close")]
    right = f"Bearer {SECRET}"
    wrong = [
        f"bearer {SECRET}",
        f"Bearer {SECRET[:-1]}x",
        f"Bearer {SECRET} ",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        f"Bearer {SECRET}{SECRET}",
    ]
    # Mostly the right secret, so the fuzzing reaches past the bearer check.
    auth = draw(st.sampled_from([right] * 6 + wrong + [None]))
    if auth is not None:
        headers.append(("Authorization", auth))
    body, content_type = draw(bodies(operation))
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    if draw(st.integers(0, 9)) == 0:
        headers.append(("Content-Encoding", draw(st.sampled_from(["gzip", "br", "x-nope"]))))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(
            st.sampled_from(["TRANSFER-ENCODING", "content-length", "Host", "Expect"])
            | st.text(alphabet=string.ascii_letters + "-", min_size=1, max_size=20)
        )
        value = draw(st.text(alphabet=string.printable.strip() + " ", max_size=100))
        headers.append((name, value))
        # Framing and routing headers twice: another request than the operation's.
        proper = proper and name.lower() not in FRAMING
    for key in ("Idempotency-Key", "webhook-id"):
        if draw(st.integers(0, 4)) == 0:
            headers.append((key, draw(st.text(alphabet=string.printable.strip(), max_size=600))))
    chunked = draw(st.integers(0, 9)) == 0
    if chunked:
        headers.append(("Transfer-Encoding", "chunked"))
        framed = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    else:
        headers.append(("Content-Length", str(len(body))))
        framed = body
    head = f"{verb} {url} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1", errors="replace") + framed, proper


class Raw(bytes):
    """Bytes whose repr stays short (hypothesis prints failing examples)."""

    half_close = False

    def __repr__(self) -> str:
        shown = bytes(self[:300])
        return f"{shown!r}{'...' if len(self) > 300 else ''} ({len(self)} bytes)"


def _raw(data: bytes, *, half_close: bool = False) -> Raw:
    out = Raw(data)
    out.half_close = half_close
    return out


@st.composite
def garbage(draw: st.DrawFn) -> Raw:
    """Requests that are not (quite) HTTP; the ones with no end are half-closed."""
    data, half_close = _garbage(draw)
    return _raw(data, half_close=half_close)


def _garbage(draw: st.DrawFn) -> tuple[bytes, bool]:
    prefix = PREFIX.encode()
    choice = draw(st.integers(0, 7))
    if choice == 0:
        return draw(st.binary(min_size=1, max_size=2000)), True
    if choice == 1:  # invalid UTF-8 in the request target
        return b"GET " + prefix + b"/hooks/\xff\xfe\xc3\x28 HTTP/1.1\r\nHost: x\r\n\r\n", False
    if choice == 2:  # invalid UTF-8 in a header value
        head = b"POST " + prefix + b"/webhook/x HTTP/1.1\r\nHost: x\r\nX-A: \xff\xfe\r\n"
        return head + b"Content-Length: 0\r\n\r\n", False
    if choice == 3:  # a huge header
        size = draw(st.integers(10_000, 200_000))
        return b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n", False
    if choice == 4:  # many headers
        many = b"".join(b"X-%d: v\r\n" % i for i in range(draw(st.integers(100, 3000))))
        return b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n", False
    if choice == 5:  # a Content-Length the body never reaches
        head = b"POST " + prefix + b"/webhook/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        return head + b"\r\nshort", True
    if choice == 6:  # bad chunked framing
        head = b"POST " + prefix + b"/webhook/x HTTP/1.1\r\nHost: x\r\n"
        return head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", False
    line = draw(st.text(max_size=200)).encode("utf-8", errors="surrogatepass")
    return line + b"\r\n\r\n", True


# -- checks --------------------------------------------------------------------------------------


#: Headers that change how a request is framed or routed.
FRAMING = frozenset({"transfer-encoding", "content-length", "host", "expect", "connection"})


def _unknown_coding(raw: bytes) -> bool:
    """Whether the request asks for a transfer coding other than plain ``chunked``: RFC 9112
    (6.1) has the server answer ``501 Not Implemented`` to that, and h11 does."""
    head = raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    codings = [
        value.strip().lower()
        for name, _, value in (line.partition(b":") for line in head)
        if name.strip().lower() == b"transfer-encoding"
    ]
    return bool(codings) and b", ".join(codings) != b"chunked"


def _check(answer: Answer | None, raw: bytes) -> Answer | None:
    if answer is None:
        return None  # closed without answering: what a server may do with garbage
    server_error = answer.status >= 500 and not (answer.status == 501 and _unknown_coding(raw))
    assert not server_error, (raw[:500], answer.status, answer.body[:1000])
    assert not TRACEBACK.search(answer.body), (raw[:500], answer.body[:2000])
    assert not any(TRACEBACK.search(v.encode("latin-1")) for v in answer.headers.values())
    return answer


@pytest.mark.parametrize(
    ("path", "method", "operation"),
    OPERATIONS,
    ids=[operation["operationId"] for _, _, operation in OPERATIONS],
)
def test_every_operation_survives_hostile_requests(
    target: Target, path: str, method: str, operation: dict[str, Any]
) -> None:
    documented = {int(code) for code in operation["responses"] if code.isdigit()}
    free = "default" in operation["responses"]

    @settings(
        max_examples=CASES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=requests(target, path, method, operation))
    def fuzz(case: tuple[bytes, bool]) -> None:
        raw, proper = case
        answer = _check(target.send(raw, head=raw.startswith(b"HEAD ")), raw)
        counted[operation["operationId"]] += 1
        if proper:
            assert answer is not None, raw[:500]
            assert answer.status in documented or free, (answer.status, raw[:500], answer.body)
            if answer.status >= 400 and not raw.startswith(b"HEAD "):
                error = json.loads(answer.body)
                assert set(error) >= {"error", "message"}, answer.body

    fuzz()
    print(f"\n{operation['operationId']}: {counted[operation['operationId']]} cases")


def test_unknown_paths_and_methods_are_4xx(target: Target) -> None:
    @settings(
        max_examples=CASES_RAW,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        verb=st.sampled_from(METHODS) | odd_methods,
        path=st.sampled_from(
            [
                PREFIX,
                f"{PREFIX}/",
                f"{PREFIX}/hooks",
                f"{PREFIX}/runs/x/y/z",
                "/",
                "/.well-known",
                "/healthz/",
            ]
        )
        | st.text(max_size=50).map(lambda s: "/" + quote(s, safe="/")),
    )
    def fuzz(verb: str, path: str) -> None:
        raw = f"{verb} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        data = raw.encode("latin-1", errors="replace")
        counted["paths"] += 1
        answer = _check(target.send(data, head=verb == "HEAD"), data)
        assert answer is None or 400 <= answer.status < 500 or answer.status == 200, answer

    fuzz()
    print(f"\nunknown paths and methods: {counted['paths']} cases")


def test_requests_that_are_not_http_get_no_server_error(target: Target) -> None:
    @settings(
        max_examples=CASES_RAW,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(raw=garbage())
    def fuzz(raw: Raw) -> None:
        counted["raw"] += 1
        _check(target.send(raw, half_close=raw.half_close), raw)

    fuzz()
    print(f"\nraw bytes: {counted['raw']} cases")
    # Still serving after all that.
    alive = target.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert alive is not None and alive.status == 200


@pytest.mark.anyio
async def test_a_start_with_arguments_the_workflow_cannot_take_is_refused(
    data_dir: Path, served: Any
) -> None:
    """Found by fuzzing ``start_run``: arguments that do not fit the workflow's signature are
    the caller's mistake, answered 400 with nothing committed (like an unknown workflow)."""
    async with af.Runtime(data_dir, [holder], durability="none") as rt:
        async with served(rt) as client:
            for args, kwargs in (([], {}), (["a", "b"], {}), (["a"], {"nope": 1})):
                answer = await client.post(
                    f"{PREFIX}/runs",
                    headers=AUTH,
                    json={"workflow": "holder", "args": args, "kwargs": kwargs},
                )
                assert answer.status_code == 400, answer.text
        assert rt.state.runs == {}
