"""``actorflow runs|hooks|events`` against a file log (read without its lock) and a real server.

The CLI runs as a real subprocess (``python -c 'from actorflow.cli import main'``), as users
run it. The same commands on ``--store postgresql://``: tests/postgres/test_query_on_postgres.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.conftest import wait_for_hook, wait_until

import actorflow as af

SECRET = "test-resume-secret-0123456789"

pytestmark = pytest.mark.anyio


@af.workflow
async def waits(name: str) -> str:
    return str(await af.create_hook(token=f"c:{name}"))


@af.workflow
async def fails() -> None:
    raise ValueError("cli")


WORKFLOWS = [waits, fails]


async def actorflow(*args: str, check: bool = True, env: dict[str, str] | None = None) -> Any:
    command = [sys.executable, "-c", "import sys; from actorflow.cli import main; sys.exit(main())"]
    result = await anyio.run_process(
        [*command, *args], check=False, env={**os.environ, **(env or {})}
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}: {result.stderr.decode()}")
    return result


def lines(result: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


async def populate(rt: af.Runtime) -> tuple[af.Run, af.Run]:
    failed = await rt.start(fails)
    waiting = await rt.start(waits, "x")
    await wait_until(lambda: rt.state.runs[failed.run_id].status == "failed")
    await wait_for_hook(rt, "c:x")
    await rt.wait_idle()
    return failed, waiting


async def test_reads_a_file_log_a_runtime_holds_open(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    async with af.Runtime(data, WORKFLOWS) as rt:
        failed, waiting = await populate(rt)
        # The runtime holds the log's lock: the CLI reads beside it.
        listed = lines(await actorflow("runs", "list", "--data-dir", data, "--json"))
        assert [r["run_id"] for r in listed] == [waiting.run_id, failed.run_id]
        table = (await actorflow("runs", "list", "--data-dir", data)).stdout.decode()
        header, *rows = table.splitlines()
        assert header.split() == ["RUN", "ID", "WORKFLOW", "STATUS", "CREATED", "STARTED",
                                  "ENDED", "VERSION"]  # fmt: skip
        assert rows[0].startswith(waiting.run_id) and "running" in rows[0]
        assert "ago" in rows[1] or "just now" in rows[1]
        # Columns are aligned: each row's status starts where the header's does.
        column = header.index("STATUS")
        assert all(row[column:].split()[0] in ("running", "failed") for row in rows)
        only = lines(await actorflow("runs", "list", "--data-dir", data, "--status", "failed",
                                     "--json"))  # fmt: skip
        assert [r["run_id"] for r in only] == [failed.run_id]
        hooks = lines(await actorflow("hooks", "list", "--data-dir", data, "--json"))
        assert [(h["token"], h["run_id"]) for h in hooks] == [("c:x", waiting.run_id)]
        # Only the process running the workflow counts what it has not taken yet.
        assert hooks[0]["buffered"] is None and hooks[0]["received"] == 0
        shown = lines(await actorflow("runs", "show", waiting.run_id, "--data-dir", data,
                                      "--json"))  # fmt: skip
        assert shown[0]["waiting_on"]["hooks"][0]["token"] == "c:x"
        text = (await actorflow("runs", "show", waiting.run_id, "--data-dir", data)).stdout
        assert b"waiting on" in text and b"c:x" in text
        timeline = lines(await actorflow("events", failed.run_id, "--data-dir", data, "--json"))
        assert timeline[0]["type"] == "run_created" and timeline[-1]["type"] == "run_failed"
        # A write needs the log: refused while the runtime holds it, nothing changed.
        refused = await actorflow("runs", "cancel", waiting.run_id, "--data-dir", data,
                                  check=False)  # fmt: skip
        assert refused.returncode == 1 and b"--url" in refused.stderr
        assert rt.state.runs[waiting.run_id].status == "running"


async def test_writes_to_a_free_file_log(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    async with af.Runtime(data, WORKFLOWS) as rt:
        _, waiting = await populate(rt)
        other = await rt.start(waits, "y")
        await wait_for_hook(rt, "c:y")
    resumed = await actorflow("hooks", "resume", "c:x", "--payload", '{"ok": 1}',
                              "--data-dir", data)  # fmt: skip
    assert b"delivered to c:x" in resumed.stdout
    cancelled = lines(await actorflow("runs", "cancel", other.run_id, "--data-dir", data,
                                      "--json"))  # fmt: skip
    assert cancelled[0]["status"] == "cancelled"
    async with af.Runtime(data, WORKFLOWS) as rt:
        assert await rt.get_run(waiting.run_id).result(timeout=10) == "{'ok': 1}"
        assert await rt.get_run(other.run_id).status() == "cancelled"


async def test_bad_options_and_unknown_ids(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    async with af.Runtime(data, WORKFLOWS) as rt:
        await populate(rt)
    missing = await actorflow("runs", "show", "wrun_missing", "--data-dir", data, check=False)
    assert missing.returncode == 1 and b"wrun_missing" in missing.stderr
    bad = await actorflow("runs", "list", "--data-dir", data, "--cursor", "zzz", check=False)
    assert bad.returncode == 1 and b"cursor" in bad.stderr
    both = await actorflow("runs", "list", "--data-dir", data, "--url", "http://x", check=False)
    assert both.returncode == 2 and b"exactly one target" in both.stderr
    no_log = await actorflow("runs", "list", "--data-dir", str(tmp_path / "none"), check=False)
    assert no_log.returncode == 1 and b"no event log" in no_log.stderr
    no_secret = await actorflow("runs", "list", "--url", "http://127.0.0.1:9", check=False,
                                env={"ACTORFLOW_RESUME_SECRET": ""})  # fmt: skip
    assert no_secret.returncode == 1 and b"ACTORFLOW_RESUME_SECRET" in no_secret.stderr
    payload = await actorflow("hooks", "resume", "c:x", "--payload", "{nope", "--data-dir", data,
                              check=False)  # fmt: skip
    assert payload.returncode == 2 and b"not valid JSON" in payload.stderr


async def test_every_command_against_a_server(tmp_path: Path, served: Any) -> None:
    async with af.Runtime(tmp_path / "data", WORKFLOWS, durability="none") as rt:
        failed, waiting = await populate(rt)
        async with served(rt) as client:
            url = str(client.base_url)
            env = {"ACTORFLOW_RESUME_SECRET": SECRET}
            listed = lines(await actorflow("runs", "list", "--url", url, "--json", env=env))
            assert [r["run_id"] for r in listed] == [waiting.run_id, failed.run_id]
            paged = await actorflow("runs", "list", "--url", url, "--json", "--limit", "1",
                                    env=env)  # fmt: skip
            cursor = paged.stderr.decode().split("--cursor ")[1].strip()
            rest = lines(await actorflow("runs", "list", "--url", url, "--json", "--cursor",
                                         cursor, env=env))  # fmt: skip
            assert [r["run_id"] for r in lines(paged) + rest] == [r["run_id"] for r in listed]
            hooks = lines(await actorflow("hooks", "list", "--url", url, "--json", env=env))
            assert [h["token"] for h in hooks] == ["c:x"]
            shown = lines(await actorflow("runs", "show", failed.run_id, "--url", url, "--json",
                                          env=env))  # fmt: skip
            assert shown[0]["status"] == "failed" and shown[0]["error"]["type"] == "ValueError"

            async def follow() -> Any:
                return await actorflow("events", waiting.run_id, "--url", url, "--follow",
                                       "--interval", "0.05", env=env)  # fmt: skip

            async with anyio.create_task_group() as tg:
                followed: list[Any] = []

                async def run_follow() -> None:
                    followed.append(await follow())

                tg.start_soon(run_follow)
                resumed = await actorflow("hooks", "resume", "c:x", "--payload", '"go"', "--url",
                                          url, env=env)  # fmt: skip
                assert b"delivered" in resumed.stdout
            text = followed[0].stdout.decode()
            assert "run_created" in text and "hook_received" in text and "run_completed" in text
            other = await rt.start(waits, "z")
            await wait_for_hook(rt, "c:z")
            cancelled = lines(await actorflow("runs", "cancel", other.run_id, "--url", url,
                                              "--json", env=env))  # fmt: skip
            assert cancelled[0]["status"] == "cancelled"
            unknown = await actorflow("events", "wrun_missing", "--url", url, env=env,
                                      check=False)  # fmt: skip
            assert unknown.returncode == 1 and b"404" in unknown.stderr
