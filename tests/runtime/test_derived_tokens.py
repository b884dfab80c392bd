"""Random hook tokens are derived from a per-run seed and the call's index, so a replay after a
crash that lost a hook_created re-creates the very token a step may already have sent out."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import copy_prefix, read_events, read_records, wait_until

import actorflow as af
from actorflow.runtime.ids import derived_token

pytestmark = pytest.mark.anyio


@af.workflow
async def two_webhooks() -> list[str]:
    first = af.create_webhook()
    second = af.create_hook()  # a plain hook with a random token too
    return [(await first).text(), await second]


async def test_a_lost_hook_created_replays_to_the_same_tokens(tmp_path: Path) -> None:
    live = tmp_path / "live"
    async with af.Runtime(live, workflows=[two_webhooks]) as rt:
        run = await rt.start(two_webhooks)
        await wait_until(lambda: len(rt.state.tokens) == 2)
        tokens = sorted(rt.state.tokens)
        await rt.wait_idle()
    records = read_records(live / "log")
    kinds = [e.type for e in read_events(live / "log")]
    # Crash right after run_started: both hook_created events are lost.
    keep = kinds.index("run_started") + 1
    assert "hook_created" not in kinds[:keep]
    crashed = tmp_path / "crashed"
    copy_prefix(records, keep, crashed / "log")
    async with af.Runtime(crashed, workflows=[two_webhooks]) as rt:
        await wait_until(lambda: len(rt.state.tokens) == 2)
        assert sorted(rt.state.tokens) == tokens
        webhook, hook = sorted(rt.state.tokens.values(), key=lambda e: e.webhook is None)
        await rt.resume_webhook(webhook.token, af.Request("POST", "http://x/", {}, b"paid"))
        await rt.resume_hook(hook.token, "approved")
        assert await rt.get_run(run.run_id).result() == ["paid", "approved"]


def test_derived_tokens_are_unguessable_and_distinct() -> None:
    seen = {derived_token("seed", "wrun_1", i) for i in range(1000)}
    assert len(seen) == 1000
    assert derived_token("seed", "wrun_1", 0) != derived_token("seed", "wrun_2", 0)
    assert derived_token("seed", "wrun_1", 0) != derived_token("other", "wrun_1", 0)
    assert all(len(t) * 6 >= 128 for t in seen)
