"""Durable timers and step retries in virtual time (pytest-trio's ``autojump_clock``).

The runtime's clock follows the event loop's (``rt.clock()`` = wall-clock base + loop time), so
under the autojump clock a seven-day sleep takes milliseconds and its length can be asserted.
Times are epoch floats near 1.7e9 whose resolution is about 2.4e-7 s, so "exact" is asserted to
a microsecond.

Times are observed where they are deterministic: ``af.now()`` inside the workflow (the time of the
event being processed) and the loop clock inside steps. The loop clock *after* ``run.result()``
is not: while the log writer fsyncs in a worker thread every task is blocked, so the autojump
clock may jump to any pending deadline (the passivation reaper's, a cancelled timer's).
Polling loops here sleep past a deadline (``trio.sleep``) rather than spin, since a spinning task
stops the autojump clock.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.lowlevel
from tests.conftest import (
    copy_prefix,
    drop_machines,
    read_events,
    read_records,
    wait_for_hook,
    wait_until,
)

import actorflow as af

pytestmark = pytest.mark.trio

EXACT = 1e-6
WEEK = 7 * 86400.0

#: Virtual loop times observed inside steps, by test.
seen: dict[str, list[Any]] = {}


@af.step
async def clock_step(label: str) -> float:
    seen.setdefault(label, []).append(trio.current_time())
    return trio.current_time()


# -- durable sleep ------------------------------------------------------------------------------


@af.workflow
async def week_long(label: str) -> float:
    before = af.now()
    await af.sleep("7d")
    await clock_step(label)
    return (af.now() - before).total_seconds()


async def test_seven_day_sleep_in_virtual_time(tmp_path: Path, autojump_clock: Any) -> None:
    async with af.Runtime(tmp_path, workflows=[week_long]) as rt:
        t0 = trio.current_time()
        run = await rt.start(week_long, "week")
        slept = await run.result()
        assert slept == pytest.approx(WEEK, abs=EXACT)
        # The step after the sleep ran exactly seven days of loop time after the start.
        assert seen["week"] == [pytest.approx(t0 + WEEK, abs=EXACT)]
    events = read_events(tmp_path / "log")
    created = next(e for e in events if e.type == "wait_created")
    completed = next(e for e in events if e.type == "wait_completed")
    assert created.data["resume_at"] - events[0].created_at == pytest.approx(WEEK, abs=EXACT)
    assert completed.created_at == pytest.approx(created.data["resume_at"], abs=EXACT)


@af.workflow
async def sleep_forms(label: str) -> list[float]:
    marks = []
    start = af.now()
    await af.sleep(90)
    marks.append((af.now() - start).total_seconds())
    await af.sleep(timedelta(hours=2))
    marks.append((af.now() - start).total_seconds())
    await af.sleep("1h30m")
    marks.append((af.now() - start).total_seconds())
    await af.sleep(start + timedelta(days=1))  # an aware datetime to wake at
    marks.append((af.now() - start).total_seconds())
    await af.sleep(start)  # in the past: fires at once
    marks.append((af.now() - start).total_seconds())
    return marks


async def test_sleep_accepts_seconds_timedelta_strings_and_datetimes(
    tmp_path: Path, autojump_clock: Any
) -> None:
    async with af.Runtime(tmp_path, workflows=[sleep_forms]) as rt:
        t0 = trio.current_time()
        marks = await (await rt.start(sleep_forms, "forms")).result()
        expected = [90.0, 90.0 + 7200, 90.0 + 7200 + 5400, 86400.0, 86400.0]
        assert marks == pytest.approx(expected, abs=EXACT)
        # A datetime holds whole microseconds: ``start`` is the clock rounded to the nearest one,
        # so a wake-up at ``start + 1 day`` may come up to half a microsecond before t0 + 1 day.
        assert trio.current_time() - t0 >= 86400.0 - EXACT


# -- first(hook, sleep) when the sleep wins ----------------------------------------------------


@af.workflow
async def expire_then_listen(tag: str) -> Any:
    hook = af.create_hook(token=f"exp:{tag}")
    index, _ = await af.first(hook, af.sleep("7d"))
    gate = af.create_hook(token=f"exp-gate:{tag}")
    await gate  # payloads resumed meanwhile must stay buffered on `hook`
    return [index, await hook, await hook]


async def test_first_sleep_wins_and_the_hook_payload_is_not_swallowed(
    tmp_path: Path, autojump_clock: Any
) -> None:
    async with af.Runtime(tmp_path, workflows=[expire_then_listen]) as rt:
        t0 = trio.current_time()
        run = await rt.start(expire_then_listen, "o")
        await trio.sleep(WEEK + 1)
        await wait_for_hook(rt, "exp-gate:o")  # the sleep has won by now
        assert trio.current_time() - t0 == pytest.approx(WEEK + 1, abs=EXACT)
        await rt.resume_hook("exp:o", "late 1")
        await rt.resume_hook("exp:o", "late 2")
        await rt.resume_hook("exp-gate:o", None)
        assert await run.result() == [1, "late 1", "late 2"]


@af.workflow
async def race_twice(tag: str) -> Any:
    hook = af.create_hook(token=f"twice:{tag}")
    start = af.now()
    first_race = await af.first(hook, af.sleep("1h"))
    lost_at = (af.now() - start).total_seconds()
    second_race = await af.first(hook, af.sleep("1h"))
    won_at = (af.now() - start).total_seconds()
    return [list(first_race), list(second_race), lost_at, won_at]


async def test_a_losing_hook_awaiter_leaves_the_payload_for_the_next_await(
    tmp_path: Path, autojump_clock: Any
) -> None:
    async with af.Runtime(tmp_path, workflows=[race_twice]) as rt:
        t0 = trio.current_time()
        run = await rt.start(race_twice, "p")
        await wait_for_hook(rt, "twice:p")
        await trio.sleep(3600 + 1)  # the first race's sleep wins
        await rt.resume_hook("twice:p", "after the first race")
        assert trio.current_time() - t0 == pytest.approx(3601, abs=EXACT)
        assert await run.result() == [
            [1, None],
            [0, "after the first race"],
            pytest.approx(3600, abs=EXACT),
            pytest.approx(3601, abs=EXACT),
        ]
        assert rt.state.timers == {}


# -- hook.wait(timeout=...) ------------------------------------------------------------------


@af.workflow
async def wait_with_timeout(tag: str) -> Any:
    hook = af.create_hook(token=f"wt:{tag}")
    start = af.now()
    try:
        await hook.wait(timeout="2h")
    except af.HookTimeoutError as exc:
        timed_out = [(af.now() - start).total_seconds(), exc.token]
    payload = await hook.wait(timeout=timedelta(hours=1))
    return [timed_out, payload, (af.now() - start).total_seconds()]


async def test_hook_wait_timeout_is_a_durable_timer(tmp_path: Path, autojump_clock: Any) -> None:
    async with af.Runtime(tmp_path, workflows=[wait_with_timeout]) as rt:
        t0 = trio.current_time()
        run = await rt.start(wait_with_timeout, "q")
        await wait_for_hook(rt, "wt:q")
        await trio.sleep(7200 + 60)
        assert await run.status() == "running"
        assert trio.current_time() - t0 == pytest.approx(7260, abs=EXACT)
        await rt.resume_hook("wt:q", "in time")
        assert await run.result() == [
            [pytest.approx(7200, abs=EXACT), "wt:q"],
            "in time",
            pytest.approx(7260, abs=EXACT),
        ]
        assert rt.state.timers == {}
    types = [e.type for e in read_events(tmp_path / "log")]
    assert types.count("wait_created") == 2
    assert types.count("wait_completed") == 1 and types.count("wait_cancelled") == 1


# -- step retries ----------------------------------------------------------------------------


def attempts(label: str) -> list[Any]:
    return seen.setdefault(label, [])


@af.step
async def flaky(label: str, failures: int) -> str:
    meta = af.get_step_metadata()
    attempts(label).append((trio.current_time(), meta.attempt, meta.step_id))
    if meta.attempt <= failures:
        raise ConnectionError(f"attempt {meta.attempt} failed")
    return f"ok after {meta.attempt}"


@af.step(max_retries=4)
async def throttled(label: str) -> str:
    meta = af.get_step_metadata()
    attempts(label).append((trio.current_time(), meta.attempt, meta.step_id))
    if meta.attempt == 1:
        raise af.RetryableError("rate limited", retry_after="5m")
    if meta.attempt == 2:
        raise af.RetryableError("rate limited", retry_after=timedelta(seconds=30))
    if meta.attempt == 3:
        wake = datetime.fromtimestamp(af.get_workflow_metadata().started_at.timestamp(), UTC)
        raise af.RetryableError("until", retry_after=wake + timedelta(hours=1))
    if meta.attempt == 4:
        raise af.RetryableError("default")
    return "done"


@af.step(max_retries=5)
async def fatal(label: str) -> str:
    attempts(label).append((trio.current_time(), af.get_step_metadata().attempt))
    raise af.FatalError("card declined")


@af.step(max_retries=3)
async def always_fails(label: str) -> str:
    attempts(label).append((trio.current_time(), af.get_step_metadata().attempt))
    raise KeyError("nope")


@af.workflow
async def call_step(kind: str, label: str, arg: int = 0) -> Any:
    if kind == "flaky":
        return await flaky(label, arg)
    if kind == "throttled":
        return await throttled(label)
    if kind == "fatal":
        try:
            return await fatal(label)
        except af.FatalError as exc:
            return f"caught: {exc}"
    return await always_fails(label)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


async def test_generic_errors_retry_with_1_2_4_second_backoff(
    tmp_path: Path, autojump_clock: Any
) -> None:
    async with af.Runtime(tmp_path, workflows=[call_step]) as rt:
        run = await rt.start(call_step, "flaky", "backoff", 3)
        assert await run.result() == "ok after 4"
    log = attempts("backoff")
    assert [attempt for _, attempt, _ in log] == [1, 2, 3, 4]
    assert gaps([t for t, _, _ in log]) == pytest.approx([1, 2, 4], abs=EXACT)
    step_ids = {step_id for _, _, step_id in log}
    assert len(step_ids) == 1 and next(iter(step_ids)).startswith("step_")
    retrying = [e for e in read_events(tmp_path / "log") if e.type == "step_retrying"]
    assert [e.data["attempt"] for e in retrying] == [1, 2, 3]


async def test_retryable_error_waits_retry_after(tmp_path: Path, autojump_clock: Any) -> None:
    async with af.Runtime(tmp_path, workflows=[call_step]) as rt:
        t0 = trio.current_time()
        run = await rt.start(call_step, "throttled", "retry-after")
        assert await run.result() == "done"
    log = attempts("retry-after")
    times = [t for t, _, _ in log]
    assert [attempt for _, attempt, _ in log] == [1, 2, 3, 4, 5]
    assert times[0] == t0
    # 5 minutes, 30 seconds, until start + 1 h (a datetime), then the default second.
    assert gaps(times) == pytest.approx([300, 30, 3600 - 330, 1], abs=EXACT)


async def test_fatal_error_is_not_retried_and_is_catchable(
    tmp_path: Path, autojump_clock: Any
) -> None:
    async with af.Runtime(tmp_path, workflows=[call_step]) as rt:
        t0 = trio.current_time()
        run = await rt.start(call_step, "fatal", "fatal")
        assert await run.result() == "caught: card declined"
    assert attempts("fatal") == [(t0, 1)]
    types = [e.type for e in read_events(tmp_path / "log")]
    assert "step_retrying" not in types and types.count("step_failed") == 1


async def test_max_retries_3_means_4_attempts_then_the_error_reaches_the_workflow(
    tmp_path: Path, autojump_clock: Any
) -> None:
    async with af.Runtime(tmp_path, workflows=[call_step]) as rt:
        run = await rt.start(call_step, "always", "four")
        with pytest.raises(af.WorkflowRunFailedError) as info:
            await run.result()
        assert isinstance(info.value.cause, KeyError)
    log = attempts("four")
    assert [attempt for _, attempt in log] == [1, 2, 3, 4]
    assert gaps([t for t, _ in log]) == pytest.approx([1, 2, 4], abs=EXACT)


async def test_a_backoff_survives_a_restart(tmp_path: Path, autojump_clock: Any) -> None:
    """The retry time is in the log: after a restart the step neither forgets it nor runs early."""
    async with af.Runtime(tmp_path, workflows=[call_step]) as rt:
        run = await rt.start(call_step, "throttled", "restart")
        while not attempts("restart"):
            await trio.lowlevel.checkpoint()
        # Stop at once: waiting here for the log would let the clock jump to the retry.
        stopped_at = trio.current_time()
    async with af.Runtime(tmp_path, workflows=[call_step]) as rt:
        assert await rt.get_run(run.run_id).result() == "done"
    log = attempts("restart")
    assert [attempt for _, attempt, _ in log] == [1, 2, 3, 4, 5]  # counted on, not restarted
    assert len({step_id for _, _, step_id in log}) == 1
    times = [t for t, _, _ in log]
    # The second runtime's wall-clock base is re-read from the real clock at start, so the
    # (real) milliseconds between the two runtimes count against the 300 s.
    assert times[1] - stopped_at == pytest.approx(300, abs=0.5)


# -- a cancel scope in workflow code ---------------------------------------------------------


@af.workflow
async def scoped_wait(tag: str) -> Any:
    with anyio.move_on_after(60):  # a user's try at a timeout, instead of hook.wait(timeout=)
        return await af.create_hook(token=f"scoped-wait:{tag}")
    return "timed out"


async def test_a_cancel_scope_deadline_in_a_workflow_does_not_stop_the_runtime(
    tmp_path: Path, autojump_clock: Any
) -> None:
    rt: af.Runtime | None = None
    try:
        # retention=None: the week-long run must not expire the failed one it is compared with.
        async with af.Runtime(
            tmp_path, workflows=[scoped_wait, week_long], retention=None
        ) as runtime:
            rt = runtime
            run = await rt.start(scoped_wait, "s")
            state = rt.state.runs[run.run_id]
            # Suspended inside its scope, or failed at once for awaiting there: either is fine.
            await wait_until(lambda: "scoped-wait:s" in rt.state.tokens or state.finished)
            await trio.sleep(120)  # past the scope's deadline
            other = await rt.start(week_long, "after-scope")
            assert await other.result() == pytest.approx(WEEK, abs=EXACT)
            assert await run.status() in ("running", "failed")
    finally:
        if rt is not None:
            drop_machines(rt)


# -- crash after every append, with timers that really fire and a step that backs off ------------


@af.step
async def throttled_once(x: int) -> int:
    if af.get_step_metadata().attempt == 1:
        raise af.RetryableError("busy", retry_after="10m")
    return x * 3


@af.workflow
async def timed_journey(tag: str) -> list[Any]:
    hook = af.create_hook(token=f"timed:{tag}")
    a = await throttled_once(1)
    await af.sleep("1h")
    try:
        await hook.wait(timeout="30m")  # nothing is sent before the timeout
        timed_out = False
    except af.HookTimeoutError:
        timed_out = True
    reached_last_await.add(tag)  # test-only side effect: the driver may send its payload now
    payload = await hook
    return [a, timed_out, payload]


reached_last_await: set[str] = set()


async def test_crash_after_every_append_with_real_timers(
    tmp_path: Path, autojump_clock: Any
) -> None:
    """Every prefix of a run with a backoff, a sleep and a timeout that fire, in virtual time.

    The driver sends its one payload, with an idempotency key, once the workflow says it has
    passed the timeout. It waits with ``trio.sleep`` and holds no virtual deadline that could
    fail the test early (its bound is in real time).
    """

    async def drive(rt: af.Runtime, run_id: str) -> list[Any]:
        state = rt.state.runs[run_id]
        # Bounded in real time, not only in rounds: the autojump clock counts a wait on a
        # worker thread (the writer's fsync, a rebuild's read) as idle, so on a loaded machine
        # thousands of virtual minutes can pass during one such wait.
        deadline = time.monotonic() + 60
        sent = False
        for _ in range(1_000_000):
            if state.finished or time.monotonic() > deadline:
                break
            if "t" in reached_last_await:
                try:
                    await rt.resume_hook("timed:t", "late", idempotency_key="only")
                    sent = True
                    break
                except af.HookNotFoundError:
                    pass
            await trio.sleep(60)
        if not (state.finished or sent):
            raise AssertionError(f"the run never reached its last await: {state.status}")
        return await rt.get_run(run_id).result()  # type: ignore[no-any-return]

    reached_last_await.clear()
    async with af.Runtime(tmp_path / "ref", workflows=[timed_journey]) as rt:
        run = await rt.start(timed_journey, "t")
        expected = await drive(rt, run.run_id)
    assert expected == [3, True, "late"]
    records = read_records(tmp_path / "ref" / "log")
    for k in range(1, len(records) + 1):
        reached_last_await.clear()
        directory = tmp_path / f"k{k}"
        copy_prefix(records, k, directory / "log")
        async with af.Runtime(directory, workflows=[timed_journey]) as rt:
            assert await drive(rt, run.run_id) == expected, f"k={k}"
        events = read_events(directory / "log")
        received = [e for e in events if e.type == "hook_received"]
        assert len(received) == 1, f"k={k}"
        assert [e.type for e in events].count("run_completed") == 1
