"""The hook round trip that several scenarios drive: start runs, resume them, time it all.

Phases, on one open ``Runtime``:

1. *start*: ``n`` runs of ``hook_once`` started by ``concurrency`` tasks (``start`` returns once
   ``run_created`` is durable); then wait until every hook is registered and the log is idle.
2. *serial*: the first ``serial`` runs resumed one at a time, each waiting for its run's end to
   be durable before the next, so every resume meets a quiet log: the unloaded latency.
3. *concurrent*: the other runs resumed by ``concurrency`` tasks at once; throughput counts
   durable acknowledgements (``resume_hook`` returned: ``hook_received`` is fsynced).

Latencies start just before ``resume_hook`` is called; "observed" ends when the workflow's code
sees the payload (``workflows.observe``), "ack" when ``resume_hook`` returns, "complete" when
the run's ``run_completed`` is durable. Process CPU time (``time.process_time``, all threads) is
taken over the start phase and the concurrent phase: CPU per operation holds up far better than
wall-clock rates when other work shares the machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

import actorflow as af

from .progress import Progress
from .workflows import hook_once, observations

__all__ = ["RoundTrip", "hook_round_trip", "wait_for_hook"]


@dataclass
class RoundTrip:
    """What one round trip measured (seconds throughout)."""

    n: int
    serial: int
    concurrency: int
    start_seconds: float = 0.0
    serial_observed: list[float] = field(default_factory=list)
    serial_ack: list[float] = field(default_factory=list)
    serial_complete: list[float] = field(default_factory=list)
    serial_probe: list[float] = field(default_factory=list)  # baseline samples, interleaved
    concurrent_observed: list[float] = field(default_factory=list)
    concurrent_ack: list[float] = field(default_factory=list)
    acked_seconds: float = 0.0  # first concurrent resume call -> last one acknowledged
    observed_seconds: float = 0.0  # ... -> last payload observed by its workflow
    completed_seconds: float = 0.0  # ... -> every run's end durable
    overloaded: int = 0  # OverloadedError answers, retried
    start_cpu: float = 0.0  # process CPU seconds (all threads) during the start phase
    concurrent_cpu: float = 0.0  # ... during the concurrent resume phase, until every run ended

    @property
    def starts_per_s(self) -> float:
        return self.n / self.start_seconds if self.start_seconds else 0.0

    def _rate(self, seconds: float) -> float:
        count = self.n - self.serial
        return count / seconds if seconds else 0.0

    @property
    def cpu_per_start(self) -> float:
        return self.start_cpu / self.n if self.n else 0.0

    @property
    def cpu_per_resume(self) -> float:
        """CPU seconds per concurrent resume, including its run's completion."""
        count = self.n - self.serial
        return self.concurrent_cpu / count if count else 0.0

    @property
    def resumes_per_s(self) -> float:
        return self._rate(self.acked_seconds)

    @property
    def observed_per_s(self) -> float:
        return self._rate(self.observed_seconds)

    @property
    def completed_per_s(self) -> float:
        return self._rate(self.completed_seconds)


async def wait_for_hook(rt: af.Runtime, token: str, timeout: float = 60.0) -> None:
    """Poll until a live hook owns ``token`` (it appears once the run has reached it)."""
    with anyio.fail_after(timeout):
        while True:
            try:
                await rt.get_hook_by_token(token)
                return
            except af.HookNotFoundError:
                await anyio.sleep(0.0005)


async def _resume(rt: af.Runtime, token: str, result: RoundTrip) -> None:
    while True:
        try:
            await rt.resume_hook(token, {"k": token})
            return
        except af.OverloadedError:
            result.overloaded += 1
            await anyio.sleep(0.001)


async def hook_round_trip(
    rt: af.Runtime,
    *,
    n: int,
    serial: int,
    concurrency: int,
    tag: str,
    meter: Progress | None = None,
    probe: Callable[[], float] | None = None,
) -> RoundTrip:
    """Run the three phases above on ``rt`` (which must have ``hook_once`` registered).

    ``probe``, if given, is called before each serial resume (the log is idle then) and its
    result kept in ``serial_probe``: a baseline sampled under the same conditions.
    """
    result = RoundTrip(n=n, serial=serial, concurrency=concurrency)
    tokens = [f"{tag}:{i}" for i in range(n)]
    runs: list[af.Run | None] = [None] * n

    pending = iter(range(n))

    async def starter() -> None:
        for i in pending:
            runs[i] = await rt.start(hook_once, tokens[i])
            if meter is not None:
                meter.advance()

    began = time.perf_counter()
    cpu = time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(min(concurrency, n)):
            tg.start_soon(starter)
    result.start_seconds = time.perf_counter() - began
    result.start_cpu = time.process_time() - cpu
    for token in tokens:
        await wait_for_hook(rt, token)
    await rt.wait_idle()

    for i in range(serial):
        token = tokens[i]
        run = runs[i]
        assert run is not None
        if probe is not None:
            result.serial_probe.append(probe())
        sent = time.perf_counter()
        await _resume(rt, token, result)
        acked = time.perf_counter()
        seen = await observations.wait_for(token)
        await run.wait(timeout=60)
        done = time.perf_counter()
        result.serial_ack.append(acked - sent)
        result.serial_observed.append(seen - sent)
        result.serial_complete.append(done - sent)
        if meter is not None:
            meter.advance()

    sent_at: dict[int, float] = {}
    acked_at: dict[int, float] = {}
    queue = iter(range(serial, n))

    async def resumer() -> None:
        for i in queue:
            sent_at[i] = time.perf_counter()
            await _resume(rt, tokens[i], result)
            acked_at[i] = time.perf_counter()
            if meter is not None:
                meter.advance()

    began = time.perf_counter()
    cpu = time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(min(concurrency, max(n - serial, 1))):
            tg.start_soon(resumer)
    last_ack = time.perf_counter()
    for i in range(serial, n):
        run = runs[i]
        assert run is not None
        await run.wait(timeout=120)
    finished = time.perf_counter()
    result.concurrent_cpu = time.process_time() - cpu
    seen_at = [await observations.wait_for(tokens[i]) for i in range(serial, n)]
    result.acked_seconds = last_ack - began
    result.completed_seconds = finished - began
    result.observed_seconds = (max(seen_at) - began) if seen_at else 0.0
    for i, seen in zip(range(serial, n), seen_at, strict=True):
        result.concurrent_observed.append(seen - sent_at[i])
        result.concurrent_ack.append(acked_at[i] - sent_at[i])
    return result
