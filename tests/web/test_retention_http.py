"""Retention over HTTP and the CLI: an expired run's 404, the health route's figures, and
``actorflow log compact`` on a stopped server's data directory (a real Hypercorn server and a
real ``actorflow`` process)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.conftest import read_records, wait_for_hook
from tests.runtime.test_retention import HOUR, finish_runs, runtime
from tests.web.conftest import SECRET

from actorflow.runtime.log.compaction import run_id_of

pytestmark = pytest.mark.anyio

AUTH = {"authorization": f"Bearer {SECRET}"}
PREFIX = "/.well-known/workflow/v1"
CLI = "import sys; from actorflow.cli import main; sys.exit(main())"


async def test_an_expired_run_is_a_404_named_run_expired(tmp_path: Path, served: Any) -> None:
    async with runtime(tmp_path, retention="1h") as rt:
        (done,) = await finish_runs(rt, 1, "http")
    async with runtime(tmp_path, retention="1h", offset=2 * HOUR) as rt:
        async with served(rt) as client:
            gone = await client.get(f"{PREFIX}/runs/{done}", headers=AUTH)
            assert gone.status_code == 404
            body = gone.json()
            assert body["error"] == "run_expired" and body["run_id"] == done
            never = await client.get(f"{PREFIX}/runs/wrun_{'f' * 32}", headers=AUTH)
            assert never.status_code == 404
            assert never.json()["error"] == "WorkflowRunNotFoundError"
            health = (await client.get("/healthz")).json()["retention"]
            assert health["retention_seconds"] == HOUR
            assert health["expired_runs"] == 1 and health["live_runs"] == 0
            assert health["log_bytes"] > 0


async def test_log_compact_on_a_stopped_servers_directory(tmp_path: Path) -> None:
    async with runtime(tmp_path, retention="1h") as rt:
        expired = await finish_runs(rt, 20, "cli")
        from tests.runtime.test_retention import collect

        live = await rt.start(collect, "cli-live")
        await wait_for_hook(rt, "cli-live")
    # Retention 0.001 s: everything that ended is past it now, in real time.
    await anyio.sleep(0.01)
    result = await anyio.run_process(
        [
            sys.executable,
            "-c",
            CLI,
            "log",
            "compact",
            str(tmp_path),
            "--retention",
            "1ms",
        ],  # fmt: skip
        check=False,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"20 runs expired" in result.stdout
    left = {run_id_of(r) for r in read_records(tmp_path / "log")}
    assert left == {live.run_id} and not set(expired) & left
    bad = await anyio.run_process(
        [
            sys.executable,
            "-c",
            CLI,
            "log",
            "compact",
            str(tmp_path),
            "--retention",
            "soon",
        ],  # fmt: skip
        check=False,
    )
    assert bad.returncode == 1 and b"not a duration" in bad.stderr
