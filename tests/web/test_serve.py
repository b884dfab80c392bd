"""``actorflow.http.serve``: binding, and refusing an app made for the other worker."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import actorflow as af
from actorflow.http import bind_socket, create_app, serve, socket_url

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("bind", ["127.0.0.1", "localhost:http", ":8000", "127.0.0.1:99999", ""])
def test_bind_refuses_what_is_not_host_and_port(bind: str) -> None:
    with pytest.raises(af.WorkflowDefinitionError, match="HOST:PORT"):
        bind_socket(bind)


def test_bind_reports_an_address_in_use() -> None:
    with bind_socket("127.0.0.1:0") as taken:
        port = taken.getsockname()[1]
        with pytest.raises(af.WorkflowDefinitionError, match="cannot listen on"):
            bind_socket(f"127.0.0.1:{port}")


def test_port_0_picks_a_port_and_the_url_says_which() -> None:
    with bind_socket("127.0.0.1:0") as sock:
        assert socket_url(sock) == f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_ipv6_urls_are_bracketed() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        sock = bind_socket("[::1]:0")
    except af.WorkflowDefinitionError:
        pytest.skip("::1 cannot be bound here")
    with sock:
        assert socket_url(sock) == f"http://[::1]:{sock.getsockname()[1]}"


async def test_an_app_for_the_other_worker_is_refused(data_dir: Path, anyio_backend: str) -> None:
    other = "trio" if anyio_backend == "asyncio" else "asyncio"
    app = create_app(af.Runtime(data_dir), manage_runtime=False, worker=other)  # type: ignore[arg-type]
    with pytest.raises(af.WorkflowDefinitionError, match=f"made for the {other} worker"):
        await serve(app, bind="127.0.0.1:0")


def test_create_app_checks_its_options(data_dir: Path) -> None:
    rt = af.Runtime(data_dir)
    with pytest.raises(af.WorkflowDefinitionError, match="max_body"):
        create_app(rt, max_body=0)
    with pytest.raises(af.WorkflowDefinitionError, match="worker"):
        create_app(rt, worker="gevent")  # type: ignore[arg-type]
