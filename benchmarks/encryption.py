"""Scenario "encryption": the hook round trip with encryption at rest on, against it off.

Both variants run the same round trip (``roundtrip.hook_round_trip``, fsync on) on a fresh
runtime each, alternating off/on/off/on so drift in the machine's speed hits both alike; the
best repetition of each is kept. The overhead is ``off / on - 1`` for throughput and
``on / off - 1`` for latency (target: at most 15%).
"""

from __future__ import annotations

import os

import anyio

import actorflow as af

from .roundtrip import RoundTrip, hook_round_trip
from .scenario import Config, ScenarioResult
from .stats import percentile, sketch, summary
from .workflows import hook_once, observations

NAME = "encryption"
TITLE = "encryption at rest: on vs off (fsync on)"


async def _measure(cfg: Config, key: bytes | None, n: int, serial: int, rep: int) -> RoundTrip:
    observations.clear()
    label = "on" if key else "off"
    data = cfg.scratch(f"encryption-{label}-{rep}") / "data"
    async with af.Runtime(data, workflows=[hook_once], durability="fsync",
                          encryption_key=key) as rt:  # fmt: skip
        return await hook_round_trip(
            rt, n=n, serial=serial, concurrency=cfg.concurrency, tag=f"enc-{label}-{rep}"
        )


def run(cfg: Config) -> ScenarioResult:
    """Round trips with and without a key; report the overhead ratios."""
    n, serial, reps = (5_000, 300, 2) if cfg.quick else (20_000, 1_000, 3)
    res = ScenarioResult(NAME, TITLE)
    res.params = {"runs": n, "serial_resumes": serial, "concurrency": cfg.concurrency,
                  "repetitions": reps, "durability": "fsync", "cipher": "AES-256-GCM"}  # fmt: skip
    key = os.urandom(32)
    results: dict[str, list[RoundTrip]] = {"off": [], "on": []}
    meter = cfg.meter("encryption", 2 * reps)
    for rep in range(reps):
        for label, k in (
            (("off", None), ("on", key)) if rep % 2 == 0 else (("on", key), ("off", None))
        ):
            results[label].append(anyio.run(_measure, cfg, k, n, serial, rep, backend=cfg.backend))
            meter.advance()
    meter.close()
    off_rate = max(r.resumes_per_s for r in results["off"])
    on_rate = max(r.resumes_per_s for r in results["on"])
    off_p50 = min(percentile(r.serial_observed, 50) for r in results["off"])
    on_p50 = min(percentile(r.serial_observed, 50) for r in results["on"])
    off_start = max(r.starts_per_s for r in results["off"])
    on_start = max(r.starts_per_s for r in results["on"])
    d = "fsync"
    c = cfg.concurrency
    res.add(f"durable resumes/s, {c} resumers, off (baseline)", off_rate, "/s", durability=d)
    res.add(f"durable resumes/s, {c} resumers, on", on_rate, "/s", on_rate / off_rate,
            "encryption off", durability=d)  # fmt: skip
    res.add("throughput overhead (off/on - 1)", 100 * (off_rate / on_rate - 1), "%",
            target="<= 15", durability=d, check="value")  # fmt: skip
    res.add("resume->observed p50, 1 resumer, off (baseline)", off_p50 * 1000, "ms", durability=d)
    res.add("resume->observed p50, 1 resumer, on", on_p50 * 1000, "ms", on_p50 / off_p50,
            "encryption off", durability=d)  # fmt: skip
    res.add("latency overhead (on/off - 1)", 100 * (on_p50 / off_p50 - 1), "%",
            target="<= 15", durability=d, check="value")  # fmt: skip
    res.add("starts/s, on", on_start, "/s", on_start / off_start, "encryption off",
            durability=d)  # fmt: skip
    # CPU per operation barely moves when other processes share the machine; wall rates do.
    off_cpu = min(r.cpu_per_resume for r in results["off"])
    on_cpu = min(r.cpu_per_resume for r in results["on"])
    res.add("CPU per resume, off (baseline)", off_cpu * 1e6, "us", durability=d)
    res.add("CPU per resume, on", on_cpu * 1e6, "us", on_cpu / off_cpu, "encryption off",
            durability=d)  # fmt: skip
    res.add("CPU overhead (on/off - 1), load-independent", 100 * (on_cpu / off_cpu - 1), "%",
            durability=d)  # fmt: skip
    best_on = min(results["on"], key=lambda r: percentile(r.serial_observed, 50))
    best_off = min(results["off"], key=lambda r: percentile(r.serial_observed, 50))
    res.samples_ms = {"encryption off, 1 resumer": sketch(best_off.serial_observed),
                      "encryption on, 1 resumer": sketch(best_on.serial_observed)}  # fmt: skip
    res.extra = {
        "resumes_per_s": {k: [r.resumes_per_s for r in v] for k, v in results.items()},
        "cpu_per_resume_us": {k: [r.cpu_per_resume * 1e6 for r in v] for k, v in results.items()},
        "serial_observed_ms": {
            k: [summary(r.serial_observed) for r in v] for k, v in results.items()
        },  # fmt: skip
    }
    return res
