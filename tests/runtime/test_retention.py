"""Retention and compaction of the file log (issue "Day thirty").

Time moves the way a restarted process sees it: ``LaterRuntime`` opens the same data directory
with its wall clock ``offset`` seconds ahead, so "eight days later" needs no waiting and no
mock. Everything else is real: segment files in ``tmp_path``, fsync on, records compared byte
for byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from tests.conftest import LaterRuntime, read_events, read_records, wait_for_hook

import actorflow as af
from actorflow.runtime.log.compaction import run_id_of
from actorflow.runtime.log.file_log import FileLog, verify_log

pytestmark = pytest.mark.anyio

HOUR = 3600.0
DAY = 86400.0


@af.workflow
async def one_payload(token: str) -> Any:
    """Waits for one payload on ``token`` and returns it: the issue's "finished run"."""
    hook = af.create_hook(token=token)
    return await hook


@af.workflow
async def collect(token: str) -> list[Any]:
    """A long-lived run: sleeps, then takes payloads until one says "stop"."""
    await af.sleep("1s")
    seen: list[Any] = []
    with af.create_hook(token=token) as hook:
        async for payload in hook:
            if payload == "stop":
                return seen
            seen.append(payload)
    return seen


WORKFLOWS = [one_payload, collect]


def small_log(data_dir: Path) -> FileLog:
    # Small segments so that a few dozen runs spread over many of them, mixed with live runs.
    return FileLog(data_dir / "log", segment_bytes=2048)


def runtime(data_dir: Path, *, offset: float = 0.0, **kwargs: Any) -> af.Runtime:
    return LaterRuntime(
        data_dir, workflows=WORKFLOWS, store=small_log(data_dir), offset=offset, **kwargs
    )


async def finish_runs(rt: af.Runtime, count: int, prefix: str) -> list[str]:
    ids = []
    for i in range(count):
        run = await rt.start(one_payload, f"{prefix}-{i}")
        await wait_for_hook(rt, f"{prefix}-{i}")
        await rt.resume_hook(f"{prefix}-{i}", {"id": f"{prefix}-{i}"})
        assert await run.result() == {"id": f"{prefix}-{i}"}
        ids.append(run.run_id)
    return ids


def records_by_run(directory: Path) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for record in read_records(directory):
        out.setdefault(run_id_of(record), []).append(record)
    return out


def log_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.log"))


# -- retention in memory --------------------------------------------------------------------


async def test_a_finished_run_reads_as_expired_after_retention(tmp_path: Path) -> None:
    async with runtime(tmp_path, retention="1h") as rt:
        (done,) = await finish_runs(rt, 1, "old")
        live = await rt.start(collect, "live")
        await wait_for_hook(rt, "live")
        await rt.resume_hook("live", "kept-1", idempotency_key="k-live")
    async with runtime(tmp_path, retention="1h", offset=2 * HOUR) as rt:
        with pytest.raises(af.RunExpiredError) as info:
            await rt.get_run(done).status()
        assert isinstance(info.value, af.WorkflowRunNotFoundError)
        assert info.value.run_id == done and "1h" in str(info.value)
        assert done not in rt.state.runs
        # An id that was never issued is "not found", not "expired".
        with pytest.raises(af.WorkflowRunNotFoundError) as fresh:
            await rt.get_run("wrun_" + "f" * 32).status()
        assert not isinstance(fresh.value, af.RunExpiredError)
        # The live run, as old as the expired one, keeps everything, its delivery key too.
        assert await rt.get_run(live.run_id).status() == "running"
        assert ("live", "k-live") in rt.state.idempotency
        await wait_for_hook(rt, "live")
        await rt.resume_hook("live", "kept-1", idempotency_key="k-live")  # a retry: no repeat
        await rt.resume_hook("live", "stop")
        assert await rt.get_run(live.run_id).result() == ["kept-1"]


async def test_a_finished_run_is_readable_until_retention_ends(tmp_path: Path) -> None:
    async with runtime(tmp_path, retention="1d") as rt:
        (done,) = await finish_runs(rt, 1, "recent")
    async with runtime(tmp_path, retention="1d", offset=23 * HOUR) as rt:
        assert await rt.compact() is not None
        assert await rt.get_run(done).result() == {"id": "recent-0"}


async def test_start_keys_and_delivery_keys_live_as_long_as_their_run(tmp_path: Path) -> None:
    async with runtime(tmp_path, retention="1h") as rt:
        first = await rt.start_once("order-1", one_payload, "keyed")
        await wait_for_hook(rt, "keyed")
        await rt.resume_hook("keyed", {"id": "p1"}, idempotency_key="d-1")
        await first.result()
        # Within retention the key still answers with the first run.
        assert (await rt.start_once("order-1", one_payload, "keyed")).run_id == first.run_id
    async with runtime(tmp_path, retention="1h", offset=2 * HOUR) as rt:
        assert rt.state.start_keys == {} and rt.state.idempotency == {}
        again = await rt.start_once("order-1", one_payload, "keyed")
        assert again.run_id != first.run_id  # the window has passed: a new start
        await wait_for_hook(rt, "keyed")
        await rt.resume_hook("keyed", {"id": "p2"}, idempotency_key="d-1")
        assert await again.result() == {"id": "p2"}


async def test_runs_expire_while_the_runtime_runs(tmp_path: Path) -> None:
    rt = runtime(tmp_path, retention="1h")
    async with rt:
        ids = await finish_runs(rt, 3, "a")
        rt.clock.offset += 2 * HOUR
        report = await rt.compact()
        assert report.runs_expired == 3
        assert all(i not in rt.state.runs for i in ids)
        status = rt.retention_status()
        assert status.expired_runs == 3 and status.retained_runs == 0
        assert status.last_pass is report


async def test_retention_none_keeps_everything(tmp_path: Path) -> None:
    async with runtime(tmp_path, retention=None) as rt:
        (done,) = await finish_runs(rt, 1, "kept")
    async with runtime(tmp_path, retention=None, offset=365 * DAY) as rt:
        report = await rt.compact()
        assert report.runs_expired == 0
        assert await rt.get_run(done).status() == "completed"


@pytest.mark.parametrize("bad", [0, -1, "soon", "0s"])
def test_a_bad_retention_is_refused(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(af.WorkflowDefinitionError, match="retention|duration"):
        af.Runtime(tmp_path, retention=bad)


# -- compaction ------------------------------------------------------------------------------


async def test_compaction_drops_expired_runs_and_keeps_live_records_byte_for_byte(
    tmp_path: Path,
) -> None:
    """Live runs 30 days old keep their whole history through compaction and restarts."""
    log_dir = tmp_path / "log"
    async with runtime(tmp_path, retention="7d") as rt:
        expired = await finish_runs(rt, 30, "gone")
        live = []
        for i in range(5):
            live.append(await rt.start(collect, f"live-{i}"))
            await wait_for_hook(rt, f"live-{i}")
            await rt.resume_hook(f"live-{i}", {"id": f"live-{i}-a"})
        expired += await finish_runs(rt, 30, "gone-later")
    before = records_by_run(log_dir)
    size_before = log_bytes(log_dir)
    assert len(list(log_dir.glob("*.log"))) > 10
    async with runtime(tmp_path, retention="7d", offset=30 * DAY) as rt:
        report = await rt.compact()
        assert rt.retention_status().expired_runs == 60  # at open, before anything woke
        assert report.segments_rewritten > 0 and report.records_dropped > 0
        assert report.bytes_after < report.bytes_before
        # Reads after the move use the new positions (passivated runs are rebuilt from them).
        for i in range(len(live)):
            await wait_for_hook(rt, f"live-{i}")
            await rt.resume_hook(f"live-{i}", {"id": f"live-{i}-b"})
    assert verify_log(log_dir) == []
    after = records_by_run(log_dir)
    assert not set(expired) & set(after)
    for run in live:
        # Byte for byte, in order; the resumes after compaction follow.
        kept = before[run.run_id]
        assert after[run.run_id][: len(kept)] == kept
    assert log_bytes(log_dir) < size_before / 3
    # Superseded generations and temporary files are gone.
    names = sorted(p.name for p in log_dir.iterdir())
    assert not [n for n in names if n.endswith(".tmp")]
    sequences = [n.split(".")[0] for n in names if n.endswith(".log")]
    assert len(sequences) == len(set(sequences))
    async with runtime(tmp_path, retention="7d", offset=30 * DAY) as rt:
        for i, run in enumerate(live):
            await wait_for_hook(rt, f"live-{i}")
            await rt.resume_hook(f"live-{i}", "stop")
            assert await rt.get_run(run.run_id).result() == [
                {"id": f"live-{i}-a"},
                {"id": f"live-{i}-b"},
            ]


async def test_compaction_moves_positions_of_runs_being_rebuilt(tmp_path: Path) -> None:
    """Passivated runs are rebuilt from their positions while passes move their records."""
    async with runtime(tmp_path, retention="1h") as rt:
        await finish_runs(rt, 20, "gone")
        live = []
        for i in range(8):
            live.append(await rt.start(collect, f"busy-{i}"))
            await wait_for_hook(rt, f"busy-{i}")
    async with runtime(tmp_path, retention="1h", offset=2 * HOUR, max_resident=1) as rt:
        sent: dict[str, list[str]] = {f"busy-{i}": [] for i in range(8)}

        async def resumer(i: int) -> None:
            token = f"busy-{i}"
            await wait_for_hook(rt, token)
            for n in range(6):
                payload = f"{token}-{n}"
                await rt.resume_hook(token, payload)
                sent[token].append(payload)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(resumer, i)
            for _ in range(4):
                await rt.compact()
                await rt.start(one_payload, f"filler-{_}")
        for i, run in enumerate(live):
            await rt.resume_hook(f"busy-{i}", "stop")
            # Exactly once and in order, checked by payload.
            assert await rt.get_run(run.run_id).result() == sent[f"busy-{i}"]
    assert verify_log(tmp_path / "log") == []


async def test_a_compacted_log_without_its_head_still_opens(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    async with runtime(tmp_path, retention="1h") as rt:
        await finish_runs(rt, 40, "head")
        live = await rt.start(collect, "tail")
        await wait_for_hook(rt, "tail")
    first_before = min(log_dir.glob("*.log")).name
    async with runtime(tmp_path, retention="1h", offset=2 * HOUR) as rt:
        report = await rt.compact()
        assert report.segments_deleted > 0
    names = sorted(p.name for p in log_dir.glob("*.log"))
    assert first_before not in names
    assert names[0].count(".") == 2  # the first one left is a rewritten generation
    async with runtime(tmp_path, retention="1h", offset=2 * HOUR) as rt:
        await wait_for_hook(rt, "tail")
        await rt.resume_hook("tail", "stop")
        assert await rt.get_run(live.run_id).result() == []


async def test_a_lost_original_first_segment_is_still_corruption(tmp_path: Path) -> None:
    async with runtime(tmp_path, retention="1h") as rt:
        await finish_runs(rt, 10, "x")
    first = min((tmp_path / "log").glob("*.log"))
    first.unlink()
    with pytest.raises(af.LogCorruptedError, match="missing"):
        async with runtime(tmp_path, retention="1h"):
            pass


async def test_leftovers_of_an_interrupted_rewrite_are_removed_at_open(tmp_path: Path) -> None:
    async with runtime(tmp_path, retention="1h") as rt:
        (done,) = await finish_runs(rt, 1, "left")
    log_dir = tmp_path / "log"
    first = min(log_dir.glob("*.log"))
    # A torn temporary file (a crash in the middle of writing it) and nothing else.
    torn = log_dir / (first.name.replace(".log", ".0001.log") + ".tmp")
    torn.write_bytes(first.read_bytes()[:100])
    async with runtime(tmp_path, retention="1h") as rt:
        assert await rt.get_run(done).result() == {"id": "left-0"}
    assert not torn.exists()


# -- an expired run over HTTP and the health route --------------------------------------------


async def test_events_of_expired_runs_leave_the_log(tmp_path: Path) -> None:
    async with runtime(tmp_path, retention="1h") as rt:
        ids = await finish_runs(rt, 12, "ev")
    async with runtime(tmp_path, retention="1h", offset=2 * HOUR) as rt:
        await rt.compact()
    left = {e.run_id for e in read_events(tmp_path / "log")}
    # The active segment is never rewritten: only runs whose records all sit in sealed
    # segments are sure to be gone; most are.
    assert len(set(ids) - left) >= len(ids) - 2
