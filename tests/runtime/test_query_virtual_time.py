"""Run.info's times in virtual time (pytest-trio's ``autojump_clock``): exact, not approximate
to a wall clock, and moving as the run moves (sleep, retry, end)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from tests.conftest import wait_until

import actorflow as af
from actorflow.runtime.describe import run_info

pytestmark = pytest.mark.trio

EXACT = timedelta(microseconds=2)
attempts: list[int] = []


@af.step(max_retries=2)
async def throttled() -> str:
    attempts.append(af.get_step_metadata().attempt)
    if len(attempts) < 3:
        raise af.RetryableError("later", retry_after="10m")
    return "ok"


def info_now(rt: af.Runtime, run: af.Run) -> af.RunInfo:
    """What ``run.info()`` answers, without its journal flush: the flush waits on a worker
    thread, and while only threads work the autojump clock leaps to the next timer."""
    return run_info(rt.state.runs[run.run_id], rt.state)


@af.workflow
async def week_then_step() -> str:
    await af.sleep("7d")
    return await throttled()


async def test_waiting_on_follows_a_sleep_and_a_retried_step(
    tmp_path: Path, autojump_clock: Any
) -> None:
    attempts.clear()
    async with af.Runtime(tmp_path, workflows=[week_then_step]) as rt:
        run = await rt.start(week_then_step)
        await wait_until(lambda: bool(rt.state.timers))
        info = info_now(rt, run)
        [nap] = info.waiting_on.sleeps
        assert abs(nap.until - info.created_at - timedelta(days=7)) <= EXACT
        assert info.started_at is not None and info.waiting_on.steps == ()
        # Past the week: the step fails once and waits ten minutes for its second attempt.
        await trio.sleep(7 * 86400)
        # Log writes run in threads: wait for the retry itself, not for more virtual time.
        await wait_until(lambda: any(s.retry_at for s in rt.state.steps.values()))
        retrying = info_now(rt, run)
        assert retrying.waiting_on.sleeps == ()
        [step] = retrying.waiting_on.steps
        assert step.attempt == 2 and step.next_retry_at is not None
        assert abs(step.next_retry_at - step.started_at - timedelta(minutes=10)) <= EXACT
        assert await run.result() == "ok"
        ended = await run.info()
        assert ended.status == "completed" and ended.waiting_on == af.WaitingOn()
        assert ended.completed_at is not None
        assert abs(ended.completed_at - info.created_at - timedelta(days=7, minutes=20)) <= EXACT
        page = await rt.list_runs(created_before=info.created_at + timedelta(microseconds=1))
        assert [r.run_id for r in page.items] == [run.run_id]
        assert (await rt.list_runs(created_after=info.created_at)).items == ()
