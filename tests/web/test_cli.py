"""The ``actorflow`` command: ``serve`` as a real subprocess on both workers (driven end to end,
then stopped by a signal), ``keys generate``, ``log verify`` and ``log dump``."""

from __future__ import annotations

import base64
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import actorflow as af
from actorflow.cli import main
from actorflow.runtime.crypto import generate_key

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/.well-known/workflow/v1"
SECRET = "cli-test-secret"
AUTH = {"authorization": f"Bearer {SECRET}"}


def _actorflow(*args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from actorflow.cli import main; sys.exit(main())",
        *args,
    ]


class Server:
    """``actorflow serve`` in a subprocess; its stderr is read line by line with a deadline."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        env = {**os.environ, "ACTORFLOW_RESUME_SECRET": SECRET}
        self.proc = subprocess.Popen(
            _actorflow("serve", *args),
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        self.lines: list[str] = []
        self._pending = b""

    def wait_for(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """The first new stderr line matching ``pattern``; fails after ``timeout`` seconds."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()  # raw reads: a buffered reader would hide lines from select
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\n" in self._pending:
                raw, self._pending = self._pending.split(b"\n", 1)
                line = raw.decode(errors="replace") + "\n"
                self.lines.append(line)
                found = re.search(pattern, line)
                if found:
                    return found
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                break
            self._pending += chunk
        raise AssertionError(f"no line matching {pattern!r}; stderr so far:\n{''.join(self.lines)}")

    def stop(self, signum: int, timeout: float = 20) -> int:
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stderr is not None
        with self.proc.stderr:
            rest = self._pending + self.proc.stderr.read()
        self.lines.extend(line + "\n" for line in rest.decode(errors="replace").splitlines())
        return code


@pytest.mark.parametrize(
    ("worker", "signum"),
    [("asyncio", signal.SIGTERM), ("trio", signal.SIGTERM), ("trio", signal.SIGINT)],
)
def test_serve_runs_the_approval_example_and_stops_gracefully(
    tmp_path: Path, worker: str, signum: int
) -> None:
    server = Server(
        tmp_path,
        "examples.approval_server",
        "--app-dir", str(REPO),
        "--bind", "127.0.0.1:0",
        "--data-dir", str(tmp_path / "data"),
        "--worker", worker,
        "--graceful-timeout", "2",
    )  # fmt: skip
    try:
        base = server.wait_for(r"serving expense_approval at (http://127\.0\.0\.1:\d+)").group(1)
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/healthz").json()["status"] == "ok"
            run_id = client.post(
                f"{PREFIX}/runs",
                headers=AUTH,
                json={"workflow": "expense_approval", "args": ["e-1", 30]},
            ).json()["run_id"]
            hooks: list[dict[str, Any]] = []
            for _ in range(500):
                hooks = client.get(f"{PREFIX}/runs/{run_id}", headers=AUTH).json()["hooks"]
                if hooks:
                    break
                time.sleep(0.01)
            [webhook] = hooks
            # The default base URL is the bound address, so webhook URLs work as printed.
            assert webhook["url"].startswith(f"{base}{PREFIX}/webhook/")
            answer = httpx.post(
                webhook["url"], json={"total": 30}, headers={"Idempotency-Key": "r-1"}
            )
            assert answer.status_code == 200
            assert answer.json()["status"] == "receipt received, awaiting approval"
            resumed = None
            for _ in range(500):
                resumed = client.post(
                    f"{PREFIX}/hooks/resume",
                    headers=AUTH,
                    json={"token": "approval:e-1", "payload": {"approved": True, "by": "ana"}},
                )
                if resumed.status_code != 404:  # the hook appears once the answer is recorded
                    break
                time.sleep(0.01)
            assert resumed is not None and resumed.status_code == 200
            run: dict[str, Any] = {}
            for _ in range(500):
                run = client.get(f"{PREFIX}/runs/{run_id}", headers=AUTH).json()
                if run["status"] == "completed":
                    break
                time.sleep(0.01)
        assert run["result"]["outcome"] == "approved"
        assert run["result"]["receipt"] == {"total": 30}
    finally:
        code = server.stop(signum)
    assert code == 0, "".join(server.lines)
    output = "".join(server.lines)
    assert "the log is flushed" in output
    assert webhook["token"] not in output  # tokens are never logged
    assert main(["log", "verify", str(tmp_path / "data")]) == 0


def test_serve_refuses_a_module_without_workflows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "not_workflows.py").write_text("workflows = [1, 2]\n")
    assert (
        main(["serve", "not_workflows", "--app-dir", str(tmp_path), "--bind", "127.0.0.1:0"]) == 1
    )
    assert "is not a workflow" in capsys.readouterr().err
    assert main(["serve", "no_such_module_here", "--app-dir", str(tmp_path)]) == 1
    assert "cannot import 'no_such_module_here'" in capsys.readouterr().err


def test_serve_reports_a_data_dir_another_server_holds(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    first = Server(
        tmp_path,
        "examples.approval_server",
        "--app-dir",
        str(REPO),
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        data,
    )
    try:
        first.wait_for(r"serving expense_approval at")
        second = subprocess.run(
            _actorflow(
                "serve",
                "examples.approval_server",
                "--app-dir",
                str(REPO),
                "--bind",
                "127.0.0.1:0",
                "--data-dir",
                data,
            ),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        assert first.stop(signal.SIGTERM) == 0
    assert second.returncode == 1
    assert "already open" in second.stderr


def test_keys_generate_prints_a_32_byte_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate"]) == 0
    out = capsys.readouterr()
    assert len(base64.b64decode(out.out.strip(), validate=True)) == 32
    assert "ACTORFLOW_ENCRYPTION_KEY" in out.err


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2


# -- log verify and dump (a log written by a real runtime) ---------------------------------------


@af.workflow
async def greet(name: str) -> str:
    answer = await af.create_hook(token=f"greet:{name}")
    return f"hello {name}: {answer}"


def _write_log(data_dir: Path, key: str | None = None) -> tuple[str, str]:
    import anyio

    async def go() -> tuple[str, str]:
        async with af.Runtime(data_dir, [greet], durability="none", encryption_key=key) as rt:
            run = await rt.start(greet, "ana")
            other = await rt.start(greet, "bo")
            with anyio.fail_after(10):
                while True:
                    if rt.state.runs[run.run_id].hooks and rt.state.runs[other.run_id].hooks:
                        break
                    await anyio.sleep(0.001)
            await rt.resume_hook("greet:ana", {"secret-ish": "payload-value"})
            await run.result(timeout=10)
            return run.run_id, other.run_id

    return anyio.run(go)


def test_log_verify_accepts_an_intact_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_log(tmp_path / "data")
    assert main(["log", "verify", str(tmp_path / "data")]) == 0
    assert main(["log", "verify", str(tmp_path / "data" / "log")]) == 0
    assert "every record is intact" in capsys.readouterr().out


def test_log_verify_lists_damage_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_log(tmp_path / "data")
    [segment] = sorted((tmp_path / "data" / "log").glob("*.log"))
    data = bytearray(segment.read_bytes())
    data[len(data) // 3] ^= 0xFF  # a flipped byte before the tail: corruption, not a torn tail
    segment.write_bytes(bytes(data))
    assert main(["log", "verify", str(tmp_path / "data")]) == 1
    out = capsys.readouterr()
    assert "corrupted" in out.out
    assert "problem(s)" in out.err


def test_log_verify_of_a_missing_directory_exits_1(tmp_path: Path) -> None:
    assert main(["log", "verify", str(tmp_path / "nothing")]) == 1


def test_log_dump_prints_one_run_one_event_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id, other_id = _write_log(tmp_path / "data")
    assert main(["log", "dump", str(tmp_path / "data"), "--run", run_id]) == 0
    lines = capsys.readouterr().out.splitlines()
    kinds = [line.split()[2] for line in lines]
    assert kinds[0] == "run_created"
    assert "hook_received" in kinds
    assert kinds[-1] == "run_completed"
    assert all(line.split()[1] == run_id for line in lines)
    assert other_id not in "".join(lines)
    assert "payload-value" in "".join(lines)
    assert main(["log", "dump", str(tmp_path / "data"), "--run", "wrun_missing"]) == 1


def test_log_dump_decrypts_only_with_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = generate_key()
    run_id, _ = _write_log(tmp_path / "data", key)
    monkeypatch.delenv("ACTORFLOW_ENCRYPTION_KEY", raising=False)
    assert main(["log", "dump", str(tmp_path / "data"), "--run", run_id]) == 0
    sealed = capsys.readouterr().out
    assert "<encrypted>" in sealed
    assert "payload-value" not in sealed
    assert "hook_received" in sealed  # types, ids and times stay readable
    monkeypatch.setenv("ACTORFLOW_ENCRYPTION_KEY", key)
    assert main(["log", "dump", str(tmp_path / "data"), "--run", run_id]) == 0
    opened = capsys.readouterr().out
    assert "payload-value" in opened
    assert "<encrypted>" not in opened


def test_log_dump_reads_a_log_a_runtime_holds_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import anyio

    async def go() -> None:
        async with af.Runtime(tmp_path / "data", [greet], durability="none") as rt:
            run = await rt.start(greet, "live")
            await rt.wait_idle(10)
            assert main(["log", "dump", str(tmp_path / "data"), "--run", run.run_id]) == 0

    anyio.run(go)
    assert "run_created" in capsys.readouterr().out
