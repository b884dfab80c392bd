"""Scenario "hook": the durable hook round trip, fsync on, against one fsync of the same disk.

Baseline: the median of ``write(128 bytes) + fsync`` on an ``O_APPEND`` file in the same folder
as the log, sampled once before each serial resume (interleaved, so a disk or CPU that gets
busier hits both alike), plus a set just before and just after the runtime part.

Beside it, the log's own append and sync of one record, with space reserved ahead as the
runtime writes and appending as it did before (``log_sync_latencies``): what reserving saves
per fsync on this disk, in the same run.
"""

from __future__ import annotations

import math

import anyio

import actorflow as af

from .disk import FsyncProbe, fsync_latencies, log_sync_latencies
from .roundtrip import RoundTrip, hook_round_trip
from .scenario import Config, ScenarioResult
from .stats import percentile, sketch, summary
from .workflows import hook_once, observations

NAME = "hook"
TITLE = "hook round trip (fsync on)"


def sizes(cfg: Config) -> tuple[int, int, int]:
    """(runs, serial resumes, fsync samples per side)."""
    return (4_000, 300, 300) if cfg.quick else (100_000, 2_000, 1_000)


async def _measure(cfg: Config, n: int, serial: int) -> RoundTrip:
    observations.clear()
    data = cfg.scratch("hook") / "data"
    meter = cfg.meter("hook round trip", 2 * n)
    try:
        with FsyncProbe(data.parent / "probe") as probe:
            async with af.Runtime(data, workflows=[hook_once], durability="fsync") as rt:
                return await hook_round_trip(rt, n=n, serial=serial, concurrency=cfg.concurrency,
                                             tag="hook", meter=meter, probe=probe)  # fmt: skip
    finally:
        meter.close()


def run(cfg: Config) -> ScenarioResult:
    """Measure the round trip and its fsync baseline in this process."""
    n, serial, fsyncs = sizes(cfg)
    res = ScenarioResult(NAME, TITLE)
    res.params = {"runs": n, "serial_resumes": serial, "concurrency": cfg.concurrency,
                  "durability": "fsync", "fsync_samples": 2 * fsyncs + serial}  # fmt: skip
    base_dir = cfg.scratch("hook-fsync")
    before = fsync_latencies(base_dir, fsyncs)
    rt = anyio.run(_measure, cfg, n, serial, backend=cfg.backend)
    after = fsync_latencies(base_dir, fsyncs)
    log_syncs = log_sync_latencies(base_dir, fsyncs)
    fs = before + rt.serial_probe + after
    f50 = percentile(fs, 50)
    add_round_trip_rows(res, rt, f50, fs)
    for name, label in (("reserved", "space reserved ahead"), ("appended", "appending")):
        v = percentile(log_syncs[name], 50)
        res.add(f"log append+fsync p50, {label}", v * 1000.0, "ms", v / f50, "fsync p50",
                durability="fsync")  # fmt: skip
    # The probes taken one before each serial resume alone, beside the baseline that also holds
    # the back-to-back sets before and after (which run warmer: 10-30% faster here). Reported
    # for reading the target row, which keeps the whole baseline.
    i50 = percentile(rt.serial_probe, 50)
    res.add("fsync p50, interleaved probes only", i50 * 1000.0, "ms", i50 / f50, "fsync p50",
            durability="fsync")  # fmt: skip
    for label, values in (("resume ack (durable)", rt.serial_ack),
                          ("resume->observed", rt.serial_observed)):  # fmt: skip
        v = percentile(values, 50)
        res.add(f"{label} p50, 1 resumer, vs interleaved fsync", v * 1000.0, "ms", v / i50,
                "interleaved fsync p50", durability="fsync")  # fmt: skip
    res.samples_ms = {
        "fsync (baseline)": sketch(fs),
        "resume->observed, 1 resumer": sketch(rt.serial_observed),
        f"resume->observed, {rt.concurrency} resumers": sketch(rt.concurrent_observed),
    }
    res.extra = {
        "fsync_ms": summary(fs),
        "fsync_interleaved_ms": summary(rt.serial_probe),
        "fsync_before_after_ms": summary(before + after),
        "log_sync_reserved_ms": summary(log_syncs["reserved"]),
        "log_sync_appended_ms": summary(log_syncs["appended"]),
        "serial_observed_ms": summary(rt.serial_observed),
        "serial_ack_ms": summary(rt.serial_ack),
        "serial_complete_ms": summary(rt.serial_complete),
        "concurrent_observed_ms": summary(rt.concurrent_observed),
        "concurrent_ack_ms": summary(rt.concurrent_ack),
        "overloaded_retries": rt.overloaded,
    }
    return res


def add_round_trip_rows(res: ScenarioResult, rt: RoundTrip, f50: float, fs: list[float]) -> None:
    """The table rows of one fsync round trip against the fsync baseline ``f50`` (seconds)."""
    ms = 1000.0
    d = "fsync"
    res.add("fsync p50 (baseline)", f50 * ms, "ms", durability=d)
    res.add("fsync p99", percentile(fs, 99) * ms, "ms", percentile(fs, 99) / f50, "fsync p50")
    res.add("starts/s", rt.starts_per_s, "/s", durability=d)
    for label, values, target in (
        ("resume->observed p50, 1 resumer", rt.serial_observed, "<= 2"),
        ("resume->observed p99, 1 resumer", rt.serial_observed, None),
        ("resume ack (durable) p50, 1 resumer", rt.serial_ack, None),
        ("resume->run end durable p50, 1 resumer", rt.serial_complete, None),
    ):
        q = 99 if "p99" in label else 50
        v = percentile(values, q)
        res.add(label, v * ms, "ms", v / f50, "fsync p50", target, durability=d)
    c = rt.concurrency
    for q in (50, 99):
        v = percentile(rt.concurrent_observed, q)
        res.add(f"resume->observed p{q}, {c} resumers", v * ms, "ms", v / f50, "fsync p50",
                durability=d)  # fmt: skip
    serial_rate = 1.0 / f50 if f50 > 0 else math.nan
    res.add(f"durable resumes/s, {c} resumers", rt.resumes_per_s, "/s",
            rt.resumes_per_s / serial_rate, "1/fsync p50", ">= 10000", d, check="value")  # fmt: skip
    res.add("CPU per start", rt.cpu_per_start * 1e6, "us", durability=d)
    res.add("CPU per resume (incl. its run's end)", rt.cpu_per_resume * 1e6, "us", durability=d)
    res.add(f"observed/s, {c} resumers", rt.observed_per_s, "/s", durability=d)
    res.add(f"runs ended durably/s, {c} resumers", rt.completed_per_s, "/s", durability=d)
