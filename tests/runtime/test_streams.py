"""Streams (issue 14): ``af.get_writable`` in workflows and steps, ``run.readable`` outside.

On a real file log with fsync, on asyncio and trio; ``tests/postgres/test_core_on_postgres.py``
runs this module again on PostgreSQL. Chunks are checked by their ids, never by counting.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.conftest import RecordingStore, read_records, resume_when_ready, wait_until

import actorflow as af
from actorflow.runtime.log.file_log import FileLog
from actorflow.runtime.stream_index import RECENT
from actorflow.runtime.streams import BATCH

pytestmark = pytest.mark.anyio

KEY = base64.b64encode(bytes(range(32))).decode()


@af.step
async def tokens(prefix: str, count: int) -> int:
    """Streams ``count`` tokens to ``tokens``, then closes it."""
    writer = af.get_writable("tokens")
    for i in range(count):
        await writer.write(f"{prefix}{i}")
    await writer.close()
    return count


@af.workflow
async def progress(count: int) -> str:
    """Writes progress from the workflow and tokens from a step; returns after a hook."""
    out = af.get_writable()
    await out.write({"stage": "start"})
    await tokens("t", count)
    await out.write(b"\x00\x01binary")
    await out.write("done")
    await af.create_hook(token="finish")
    return "ok"


async def test_chunks_arrive_in_order_of_every_kind(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[progress]) as rt:
        run = await rt.start(progress, 5)
        assert [c async for c in run.readable("tokens")] == [f"t{i}" for i in range(5)]
        head = run.readable()
        got = [await head.__anext__() for _ in range(3)]
        assert got == [{"stage": "start"}, b"\x00\x01binary", "done"]
        assert head.next_index == 3
        assert await run.list_streams() == ["default", "tokens"]
        await resume_when_ready(rt, "finish", None)
        assert await run.result() == "ok"
        # The run's end ends the unclosed stream after its last chunk.
        with anyio.fail_after(10):
            assert [c async for c in head] == []


async def test_a_reader_resumes_from_start_index_without_gap_or_repeat(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[progress]) as rt:
        run = await rt.start(progress, 300)
        first = run.readable("tokens")
        seen = []
        async for chunk in first:
            seen.append(chunk)
            if len(seen) == 117:
                break
        await first.aclose()
        again = run.readable("tokens", start_index=first.next_index)
        seen += [c async for c in again]
        assert seen == [f"t{i}" for i in range(300)]
        tail = [c async for c in run.readable("tokens", start_index=299)]
        assert tail == ["t299"]
        assert [c async for c in run.readable("tokens", start_index=300)] == []


async def test_chunks_and_streams_survive_a_restart(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[progress]) as rt:
        run = await rt.start(progress, 3)
        await wait_until(lambda: "finish" in rt.state.tokens)
    async with af.Runtime(tmp_path, workflows=[progress]) as rt:
        again = rt.get_run(run.run_id)
        assert await again.list_streams() == ["default", "tokens"]
        # The replay re-ran the workflow's writes: none of them is in the stream twice.
        head = again.readable()
        assert [await head.__anext__() for _ in range(3)] == [
            {"stage": "start"}, b"\x00\x01binary", "done"
        ]  # fmt: skip
        await resume_when_ready(rt, "finish", None)
        assert await again.result() == "ok"
        assert [c async for c in head] == []
        assert [c async for c in again.readable("tokens")] == ["t0", "t1", "t2"]


@af.workflow
async def closer() -> str:
    out = af.get_writable("log")
    await out.write("a")
    await out.close()
    try:
        await out.write("b")
    except af.WorkflowDefinitionError as exc:
        return f"refused: {exc}"
    return "accepted"


async def test_a_closed_stream_ends_its_readers_and_refuses_writes(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[closer]) as rt:
        run = await rt.start(closer)
        assert (await run.result()).startswith("refused: stream 'log'")
        assert [c async for c in run.readable("log")] == ["a"]


@af.workflow
async def endless() -> None:
    out = af.get_writable()
    await out.write(1)
    await af.sleep("30d")


async def test_a_reader_waiting_at_the_end_ends_with_the_run(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[endless]) as rt:
        run = await rt.start(endless)
        got: list[Any] = []

        async def read() -> None:
            async for chunk in run.readable():
                got.append(chunk)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await wait_until(lambda: got == [1])
                await run.cancel("enough")
        assert got == [1]
        assert await run.status() == "cancelled"


async def test_an_unknown_run_or_a_bad_name_is_refused(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[endless]) as rt:
        with pytest.raises(af.WorkflowRunNotFoundError):
            [c async for c in rt.get_run("wrun_nope").readable()]
        with pytest.raises(af.WorkflowRunNotFoundError):
            await rt.get_run("wrun_nope").list_streams()
        with pytest.raises(af.WorkflowDefinitionError, match="namespace"):
            rt.get_run("wrun_nope").readable("a/b")
        with pytest.raises(af.WorkflowDefinitionError, match="start_index"):
            rt.get_run("wrun_nope").readable("a", start_index=-1)
    with pytest.raises(af.WorkflowDefinitionError, match="inside a workflow or a running step"):
        af.get_writable()


@af.workflow
async def secret_stream() -> None:
    out = af.get_writable("secret")
    await out.write("plaintext-chunk-from-the-workflow")
    await tokens("plaintext-token-", 2)
    await af.create_hook(token="hold")


async def test_chunks_are_encrypted_at_rest(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[secret_stream], encryption_key=KEY) as rt:
        run = await rt.start(secret_stream)
        await wait_until(lambda: "hold" in rt.state.tokens)
        await rt.wait_idle()
        assert [c async for c in run.readable("tokens")] == ["plaintext-token-0",
                                                             "plaintext-token-1"]  # fmt: skip
        head = run.readable("secret")
        assert await head.__anext__() == "plaintext-chunk-from-the-workflow"
    records = read_records(tmp_path / "log")
    chunks = [r for r in records if b'"stream_chunk"' in r]
    assert len(chunks) == 3
    assert all(b'{"$enc":' in r for r in chunks)
    assert not any(b"plaintext" in r for r in records)
    async with af.Runtime(tmp_path, workflows=[secret_stream], encryption_key=KEY) as rt:
        again = rt.get_run(run.run_id)
        assert [c async for c in again.readable("tokens")] == ["plaintext-token-0",
                                                               "plaintext-token-1"]  # fmt: skip


# -- durability and retries --------------------------------------------------------------------

#: Attempts of ``flaky_tokens`` that have run, per test (a step's side channel).
ATTEMPTS: list[int] = []


@af.step(max_retries=2)
async def flaky_tokens(count: int, fail_after: int) -> int:
    """Writes ``count`` numbered chunks; its first attempt fails after ``fail_after`` of them."""
    meta = af.get_step_metadata()
    ATTEMPTS.append(meta.attempt)
    writer = af.get_writable()
    for i in range(count):
        await writer.write({"id": i, "attempt": meta.attempt})
        if meta.attempt == 1 and i + 1 == fail_after:
            raise af.RetryableError("the first attempt breaks", retry_after=0)
    return count


@af.workflow
async def retried(count: int, fail_after: int) -> int:
    return await flaky_tokens(count, fail_after)


async def test_a_retried_step_adds_no_duplicate_chunks(tmp_path: Path) -> None:
    ATTEMPTS.clear()
    async with af.Runtime(tmp_path, workflows=[retried]) as rt:
        run = await rt.start(retried, 6, 4)
        assert await run.result() == 6
        chunks = [c async for c in run.readable()]
    assert ATTEMPTS == [1, 2]
    # Chunks 0-3 are the first attempt's (already read by then); the retry continued at 4.
    assert [c["id"] for c in chunks] == [0, 1, 2, 3, 4, 5]
    assert [c["attempt"] for c in chunks] == [1, 1, 1, 1, 2, 2]


#: Released by the test to let ``stalled_tokens`` go on (one per runtime incarnation).
GATES: list[anyio.Event] = []


@af.step
async def stalled_tokens(count: int, stall_at: int) -> int:
    """Writes chunks; its first run stops at ``stall_at`` until its process goes away."""
    writer = af.get_writable()
    for i in range(count):
        if i == stall_at and GATES:
            await GATES[-1].wait()
        await writer.write({"id": i})
    return count


@af.workflow
async def crashy(count: int, stall_at: int) -> int:
    return await stalled_tokens(count, stall_at)


async def test_a_step_rerun_after_a_crash_continues_its_stream_once(tmp_path: Path) -> None:
    GATES[:] = [anyio.Event()]
    async with af.Runtime(tmp_path, workflows=[crashy]) as rt:
        run = await rt.start(crashy, 8, 5)
        seen = []
        reader = run.readable()
        async for chunk in reader:
            seen.append(chunk["id"])
            if len(seen) == 5:
                break
        # The process goes away with the step stalled mid-stream (its attempt never ends).
    GATES.clear()
    async with af.Runtime(tmp_path, workflows=[crashy]) as rt:
        again = rt.get_run(run.run_id)
        assert await again.result() == 8
        seen += [c["id"] async for c in again.readable(start_index=reader.next_index)]
        whole = [c["id"] async for c in again.readable()]
    assert seen == whole == list(range(8))


async def test_a_step_write_returns_only_once_the_chunk_is_synced(tmp_path: Path) -> None:
    store = RecordingStore(FileLog(tmp_path / "log"))
    synced_when_written: list[bool] = []

    async with af.Runtime(tmp_path, workflows=[progress], store=store) as rt:
        original = rt.streams.write_from_step

        async def checked(ctx: Any, namespace: str, seq: int, chunk: Any) -> None:
            await original(ctx, namespace, seq, chunk)
            synced_when_written.append("stream_chunk" in store.synced_types())

        rt.streams.write_from_step = checked  # type: ignore[method-assign]
        run = await rt.start(progress, 3)
        assert [c async for c in run.readable("tokens")] == ["t0", "t1", "t2"]
    assert synced_when_written == [True, True, True]


# -- slow readers ------------------------------------------------------------------------------


@af.workflow
async def firehose(count: int) -> int:
    out = af.get_writable()
    for i in range(count):
        await out.write({"id": i, "pad": "x" * 200})
    await out.close()
    return count


async def test_a_slow_reader_holds_neither_memory_nor_the_writer(tmp_path: Path) -> None:
    count = 3000
    async with af.Runtime(tmp_path, workflows=[firehose]) as rt:
        run = await rt.start(firehose, 1)
        await run.result()
        slow = rt.get_run((await rt.start(firehose, count)).run_id).readable()
        assert (await slow.__anext__())["id"] == 0
        # The reader stalls; the writer finishes the whole stream meanwhile.
        assert await rt.get_run(slow._source.run_id).result() == count  # type: ignore[attr-defined]
        log = rt.state.streams.find(slow._source.run_id, "default")  # type: ignore[attr-defined]
        assert log is not None and log.closed and len(log.positions) == count
        # What the runtime holds for it: positions (8 bytes a chunk) and a bounded buffer.
        assert log.recent is None or len(log.recent) <= RECENT
        ids = [0]
        async for chunk in slow:
            ids.append(chunk["id"])
            held = len(slow._source._buffer)  # type: ignore[attr-defined]
            assert held < BATCH
        assert ids == list(range(count))
