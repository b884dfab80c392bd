"""The workflows the scenarios run, and the observation point they report through.

Measuring "from ``resume_hook`` to the workflow observing the payload" needs a clock reading
at the moment workflow code receives the payload. The workflows below call ``observe(key)``
right after ``await hook`` returns. It writes ``time.perf_counter()`` into a module-level dict
and wakes whoever waits for that key. This is a one-way side channel: the workflow never reads
anything back, so its commands, and therefore its log and any replay, stay deterministic. The
harness changes nothing in ``src/`` and patches nothing; the timestamp is taken by the workflow's
own code, in the dispatcher, at the instant the runtime hands it the payload.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

import actorflow as af

__all__ = [
    "Observations",
    "hook_once",
    "hook_loop",
    "noop_step",
    "observations",
    "recovery_run",
    "step_chain",
]


class Observations:
    """Times at which workflow code saw payloads, by key, and events to wait for them."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self._waiters: dict[str, anyio.Event] = {}

    def clear(self) -> None:
        self.seen.clear()
        self._waiters.clear()

    def mark(self, key: str) -> None:
        self.seen[key] = time.perf_counter()
        waiter = self._waiters.pop(key, None)
        if waiter is not None:
            waiter.set()

    async def wait_for(self, key: str) -> float:
        """The time ``key`` was observed (waits for it)."""
        when = self.seen.get(key)
        if when is not None:
            return when
        waiter = self._waiters.setdefault(key, anyio.Event())
        await waiter.wait()
        return self.seen[key]


observations = Observations()


def observe(payload: Any) -> None:
    """The observation point: record when workflow code saw ``payload`` (by its ``"k"``)."""
    if isinstance(payload, dict) and "k" in payload:
        observations.mark(payload["k"])


@af.step(name="bench.noop")
async def noop_step(i: int) -> int:
    """A step that does nothing: what remains is the runtime's cost of a step."""
    return i


@af.workflow(name="bench.hook_once")
async def hook_once(token: str) -> str:
    """Suspend on one hook, observe its payload, finish."""
    hook = af.create_hook(token=token)
    payload = await hook
    observe(payload)
    return token


@af.workflow(name="bench.hook_loop")
async def hook_loop(token: str) -> int:
    """Receive payloads on one hook until one says stop; each adds one event to the history."""
    return await _receive_until_stop(token)


@af.workflow(name="bench.step_chain")
async def step_chain(n: int) -> int:
    """``n`` sequential no-op steps."""
    total = 0
    for i in range(n):
        total += await noop_step(i)
    return total


@af.workflow(name="bench.recovery_run")
async def recovery_run(token: str, steps: int) -> int:
    """A few steps, then a hook left pending: a typical suspended run to recover."""
    for i in range(steps):
        await noop_step(i)
    return await _receive_until_stop(token)


async def _receive_until_stop(token: str) -> int:
    # No `with hook:` here: a coroutine still suspended when the process exits is closed by
    # the garbage collector, and a `with` block would then try to dispose the hook outside any
    # event loop (see benchmarks/README.md, "Findings").
    count = 0
    hook = af.create_hook(token=token)
    async for payload in hook:
        observe(payload)
        count += 1
        if payload.get("stop"):
            break
    hook.dispose()
    return count
