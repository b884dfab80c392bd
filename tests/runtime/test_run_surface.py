"""The rest of the Workflow SDK's run surface (issue 14): ``hook.get_conflict()`` and
``has_conflict``, ``run.wake_up()``, webhook metadata, ``request.form()``, and steps told to
stop when their run is cancelled or their branch loses a ``first``.

Real file log with fsync, asyncio and trio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.conftest import read_events, resume_when_ready, wait_for_hook, wait_until

import actorflow as af

pytestmark = pytest.mark.anyio


# -- get_conflict / has_conflict ----------------------------------------------------------------


@af.workflow
async def claimer(order: str) -> dict[str, Any]:
    """The SDK's dedupe pattern: claim ``order:<id>``; if another run holds it, branch."""
    hook = af.create_hook(token=f"order:{order}")
    holder = await hook.get_conflict()
    if holder is not None:
        return {"duplicate_of": holder, "has_conflict": hook.has_conflict}
    webhook = af.create_webhook()
    assert not webhook.has_conflict  # a random token: known at once
    assert await webhook.get_conflict() is None
    return {"payload": await hook, "has_conflict": hook.has_conflict}


async def test_get_conflict_names_the_holder_without_awaiting_the_hook(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[claimer]) as rt:
        first = await rt.start(claimer, "7")
        await wait_for_hook(rt, "order:7")
        second = await rt.start(claimer, "7")
        assert await second.result(timeout=10) == {
            "duplicate_of": first.run_id, "has_conflict": True
        }  # fmt: skip
        await rt.resume_hook("order:7", "paid")
        assert await first.result(timeout=10) == {"payload": "paid", "has_conflict": False}
    # Replayed from the log, the duplicate takes the same branch (the conflict is recorded).
    async with af.Runtime(tmp_path, workflows=[claimer]) as rt:
        assert (await rt.get_run(second.run_id).result())["duplicate_of"] == first.run_id
    kinds = [e.type for e in read_events(tmp_path / "log") if e.run_id == second.run_id]
    assert "hook_conflict" in kinds and "hook_received" not in kinds


# -- wake_up ------------------------------------------------------------------------------------


@af.workflow
async def sleepy() -> list[str]:
    out = []
    await af.sleep("7d")
    out.append("first sleep over")
    hook = af.create_hook(token="sleepy")
    index, _ = await af.first(hook.wait(timeout="1d"), af.sleep("30d"))
    out.append(f"race won by {index}")
    return out


async def test_wake_up_fires_pending_sleeps_and_replay_agrees(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[sleepy]) as rt:
        run = await rt.start(sleepy)
        await wait_until(lambda: len(rt.state.timers) == 1)
        (first_sleep,) = rt.state.timers
        assert await run.wake_up(["wait_other"]) == []
        assert await run.wake_up() == [first_sleep]
        await wait_for_hook(rt, "sleepy")
        await wait_until(lambda: len(rt.state.timers) == 2)
    # After a restart: only the sleep fires, not the hook's timeout (which is no sleep).
    async with af.Runtime(tmp_path, workflows=[sleepy]) as rt:
        again = rt.get_run(run.run_id)
        timers = {t.purpose: w for w, t in rt.state.timers.items()}
        assert await again.wake_up() == [timers["sleep"]]
        assert await again.result(timeout=10) == ["first sleep over", "race won by 1"]
    async with af.Runtime(tmp_path, workflows=[sleepy]) as rt:
        assert await rt.get_run(run.run_id).result() == ["first sleep over", "race won by 1"]
        with pytest.raises(af.WorkflowRunNotFoundError):
            await rt.get_run("wrun_nope").wake_up()
    woken = [e for e in read_events(tmp_path / "log") if e.data.get("woken")]
    assert [e.type for e in woken] == ["wait_completed", "wait_completed"]


# -- webhook metadata and forms -----------------------------------------------------------------


@af.workflow
async def form_taker() -> dict[str, Any]:
    webhook = af.create_webhook(metadata={"purpose": "signup", "plan": 3})
    request = await webhook
    form = request.form()
    files = {n: [(f.filename, f.content_type, f.data) for f in fs] for n, fs in form.files.items()}
    try:
        af.Request("POST", "http://x/", {"content-type": "text/plain"}, b"a=1").form()
    except af.SerializationError as exc:
        refused = str(exc)
    return {"meta": webhook.metadata, "fields": dict(form.fields), "files": files,
            "email": form["email"], "refused": refused}  # fmt: skip


async def test_webhook_metadata_and_form_bodies(tmp_path: Path) -> None:
    key = "PUmdH5xoV2l3uVpQ0nHS2aOUhRYyHN6MKdbwHAAwWSI="
    async with af.Runtime(tmp_path, workflows=[form_taker], encryption_key=key) as rt:
        urlencoded = await rt.start(form_taker)
        multipart = await rt.start(form_taker)
        tokens = []
        for run in (urlencoded, multipart):
            await wait_until(lambda run=run: bool(rt.state.runs[run.run_id].hooks))
            (token,) = rt.state.runs[run.run_id].hooks or []
            tokens.append(token)
            hook = await rt.get_hook_by_token(token)
            assert hook.metadata == {"purpose": "signup", "plan": 3} and hook.is_webhook
        await rt.resume_webhook(tokens[0], af.Request(
            "POST", "http://h/", {"content-type": "application/x-www-form-urlencoded"},
            b"email=a%40b.c&tag=x&tag=y",
        ))  # fmt: skip
        body = (
            b'--B\r\nContent-Disposition: form-data; name="email"\r\n\r\nc@d.e\r\n'
            b'--B\r\nContent-Disposition: form-data; name="cv"; filename="cv.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\nhello\x00there\r\n--B--\r\n"
        )
        await rt.resume_webhook(tokens[1], af.Request(
            "POST", "http://h/", {"content-type": "multipart/form-data; boundary=B"}, body
        ))  # fmt: skip
        got = await urlencoded.result(timeout=10)
        assert got["meta"] == {"purpose": "signup", "plan": 3}
        assert got["fields"] == {"email": ["a@b.c"], "tag": ["x", "y"]} and got["files"] == {}
        assert got["email"] == "a@b.c"
        assert "text/plain" in got["refused"]
        got = await multipart.result(timeout=10)
        assert got["fields"] == {"email": ["c@d.e"]}
        assert got["files"] == {"cv": [("cv.txt", "text/plain", b"hello\x00there")]}
    # The metadata is a user value: encrypted at rest like a hook's.
    created = [e for e in read_events(tmp_path / "log") if e.type == "hook_created"]
    assert all("$enc" in str(e.data["metadata"]) for e in created)


# -- step cancellation --------------------------------------------------------------------------

#: What the steps below saw, by step id: "cancelled" (their task), or their flag when shielded.
SEEN: dict[str, Any] = {}
STARTED: set[str] = set()
RELEASE: list[anyio.Event] = []


@af.step
async def endless_step(label: str) -> str:
    meta = af.get_step_metadata()
    STARTED.add(label)
    try:
        await anyio.sleep_forever()
    except anyio.get_cancelled_exc_class():
        SEEN[label] = ("cancelled", meta.cancelled)
        raise
    return "never"


@af.step
async def stubborn_step(label: str) -> str:
    """Finishes its work under a shield, then returns: a value that must not be recorded."""
    meta = af.get_step_metadata()
    STARTED.add(label)
    with anyio.CancelScope(shield=True):
        await RELEASE[-1].wait()
    SEEN[label] = ("returned", meta.cancelled)
    return "late result"


@af.workflow
async def races(label: str) -> Any:
    hook = af.create_hook(token=f"race:{label}")
    index, value = await af.first(endless_step(label), stubborn_step(label + "-s"), hook)
    return [index, value]


@af.workflow
async def cancellable(label: str) -> Any:
    return await af.gather(endless_step(label), stubborn_step(label + "-s"))


def step_events(tmp_path: Path, run_id: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in read_events(tmp_path / "log"):
        if e.run_id == run_id and e.type.startswith("step_") and e.correlation_id:
            out.setdefault(e.correlation_id, []).append(e.type)
    return out


async def test_steps_of_a_lost_first_are_cancelled_never_completed(tmp_path: Path) -> None:
    SEEN.clear()
    STARTED.clear()
    RELEASE[:] = [anyio.Event()]
    async with af.Runtime(tmp_path, workflows=[races]) as rt:
        run = await rt.start(races, "a")
        await wait_until(lambda: len(STARTED) == 2)
        await resume_when_ready(rt, "race:a", "hook wins")
        assert await run.result(timeout=10) == [2, "hook wins"]
        await wait_until(lambda: "a" in SEEN)
        assert SEEN["a"] == ("cancelled", True)
        RELEASE[-1].set()  # the shielded step returns after it was told to stop
        await wait_until(lambda: "a-s" in SEEN and not rt.steps._scopes)
        assert SEEN["a-s"] == ("returned", True)
        await rt.wait_idle()
    kinds = step_events(tmp_path, run.run_id)
    assert sorted(kinds.values()) == [["step_started", "step_cancelled"]] * 2
    # Replayed, the race ends the same way and nothing more is recorded.
    async with af.Runtime(tmp_path, workflows=[races]) as rt:
        assert await rt.get_run(run.run_id).result() == [2, "hook wins"]
    assert step_events(tmp_path, run.run_id) == kinds


async def test_steps_of_a_cancelled_run_are_cancelled_never_completed(tmp_path: Path) -> None:
    SEEN.clear()
    STARTED.clear()
    RELEASE[:] = [anyio.Event()]
    async with af.Runtime(tmp_path, workflows=[cancellable]) as rt:
        run = await rt.start(cancellable, "c")
        await wait_until(lambda: len(STARTED) == 2)
        await run.cancel("operator")
        await wait_until(lambda: "c" in SEEN)
        assert SEEN["c"] == ("cancelled", True)
        RELEASE[-1].set()
        await wait_until(lambda: "c-s" in SEEN and not rt.steps._scopes)
        assert SEEN["c-s"] == ("returned", True)
        await rt.wait_idle()
        assert await run.status() == "cancelled"
    kinds = step_events(tmp_path, run.run_id)
    assert sorted(kinds.values()) == [["step_started", "step_cancelled"]] * 2
