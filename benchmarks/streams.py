"""Scenario "streams": durable stream chunks from one workflow, and write -> reader latency.

Against the same run's baselines: one fsync of the same disk (``write`` + ``fsync`` of 128
bytes, sampled before and after) and the hook round trip (a resume until the workflow sees it,
one resumer at a time, on the same kind of runtime).

- *chunks/s, a step writing*: one step writes ``N`` chunks of about 100 bytes, each
  ``await write(...)`` returning once that chunk is durable, so a chunk costs a group commit:
  compared with ``1 / fsync p50``.
- *chunks/s, the workflow writing*: the workflow's own writes are commands of its run, recorded
  in order without waiting, so they share fsyncs; timed until a reader has seen the last one.
- *write -> reader sees p50*: a step writes a chunk carrying ``perf_counter()`` taken just before
  ``write``; a reader following the stream in the same process takes the difference when it
  receives it. Writes are paced (the reader is caught up before the next one), so this is
  latency, not queueing. Compared with fsync p50 and with the hook round trip p50.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

import actorflow as af

from .disk import fsync_latencies
from .roundtrip import hook_round_trip
from .scenario import Config, ScenarioResult
from .stats import percentile, sketch, summary
from .workflows import hook_once, observations

NAME = "streams"
TITLE = "stream chunks (fsync on)"

PAD = "x" * 80


@af.step(name="bench.stream_step")
async def stream_step(count: int, paced: bool) -> int:
    out = af.get_writable()
    for i in range(count):
        await out.write({"i": i, "t": time.perf_counter(), "pad": PAD})
        if paced:
            await GATE.wait_turn(i)
    await out.close()
    return count


@af.workflow(name="bench.stream_from_step")
async def stream_from_step(count: int, paced: bool) -> int:
    return await stream_step(count, paced)


@af.workflow(name="bench.stream_from_workflow")
async def stream_from_workflow(count: int) -> int:
    out = af.get_writable()
    for i in range(count):
        await out.write({"i": i, "pad": PAD})
    await out.close()
    return count


class _Gate:
    """Paces the writing step: write ``i + 1`` waits until the reader has seen chunk ``i``."""

    def __init__(self) -> None:
        self.seen = -1
        self.changed = anyio.Event()

    def reset(self) -> None:
        self.seen = -1
        self.changed = anyio.Event()

    def saw(self, i: int) -> None:
        self.seen = i
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_turn(self, i: int) -> None:
        while self.seen < i:
            await self.changed.wait()


GATE = _Gate()


def sizes(cfg: Config) -> tuple[int, int, int]:
    """(chunks for throughput, paced chunks for latency, hook round-trip resumes)."""
    return (1_000, 200, 200) if cfg.quick else (5_000, 1_000, 1_000)


async def _measure(cfg: Config) -> dict[str, Any]:
    chunks, paced, resumes = sizes(cfg)
    data = cfg.scratch("streams") / "data"
    out: dict[str, Any] = {}
    workflows = [stream_from_step, stream_from_workflow, hook_once]
    meter = cfg.meter("streams", 4)
    async with af.Runtime(data, workflows=workflows, durability="fsync") as rt:
        observations.clear()
        hook = await hook_round_trip(rt, n=resumes, serial=resumes, concurrency=1, tag="stream")
        out["hook_observed"] = hook.serial_observed
        meter.advance()
        for label, start in (
            ("step", lambda: rt.start(stream_from_step, chunks, False)),
            ("workflow", lambda: rt.start(stream_from_workflow, chunks)),
        ):
            began = time.perf_counter()
            run = await start()
            seen = 0
            async for _ in run.readable():
                seen += 1
            out[f"{label}_seconds"] = time.perf_counter() - began
            assert seen == chunks
            meter.advance()
        GATE.reset()
        run = await rt.start(stream_from_step, paced, True)
        latencies = []
        async for chunk in run.readable():
            latencies.append(time.perf_counter() - chunk["t"])
            GATE.saw(chunk["i"])
        out["latency"] = latencies
        out["syncs"] = rt.journal.writer.syncs
        meter.advance()
    meter.close()
    return out


def run(cfg: Config) -> ScenarioResult:
    chunks, paced, resumes = sizes(cfg)
    res = ScenarioResult(NAME, TITLE)
    res.params = {"chunks": chunks, "paced_chunks": paced, "hook_resumes": resumes,
                  "chunk_bytes": 100, "durability": "fsync"}  # fmt: skip
    base_dir = cfg.scratch("streams-fsync")
    before = fsync_latencies(base_dir, 300)
    got = anyio.run(_measure, cfg, backend=cfg.backend)
    fs = before + fsync_latencies(base_dir, 300)
    f50 = percentile(fs, 50)
    h50 = percentile(got["hook_observed"], 50)
    ms = 1000.0
    d = "fsync"
    res.add("fsync p50 (baseline)", f50 * ms, "ms", durability=d)
    res.add("hook round trip p50, 1 resumer (baseline)", h50 * ms, "ms", h50 / f50, "fsync p50",
            durability=d)  # fmt: skip
    for label in ("step", "workflow"):
        rate = chunks / got[f"{label}_seconds"]
        res.add(f"durable chunks/s, the {label} writing", rate, "/s", rate * f50, "1/fsync p50",
                durability=d)  # fmt: skip
    lat = got["latency"]
    for q in (50, 99):
        v = percentile(lat, q)
        res.add(f"write -> reader sees p{q}", v * ms, "ms", v / f50, "fsync p50", durability=d)
    v = percentile(lat, 50)
    res.add("write -> reader sees p50 / hook round trip p50", v / h50, "x", durability=d)
    res.samples_ms = {"fsync (baseline)": sketch(fs), "write->reader": sketch(lat),
                      "hook round trip": sketch(got["hook_observed"])}  # fmt: skip
    res.extra = {"fsync_ms": summary(fs), "latency_ms": summary(lat),
                 "hook_observed_ms": summary(got["hook_observed"]),
                 "step_seconds": got["step_seconds"],
                 "workflow_seconds": got["workflow_seconds"]}  # fmt: skip
    return res
