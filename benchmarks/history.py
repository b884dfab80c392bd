"""Scenario "history": does a resume cost more when the run has a long history?

Two resident runs of ``hook_loop`` on one runtime (fsync on): run A has about 10 events behind it,
run B has 10,000 (its hook was resumed 10,000 times first, by concurrent resumers). Then both
are resumed one at a time, alternately (A, B, A, B, ...), and the latency from ``resume_hook``
to the workflow observing the payload is compared. The baseline is run A in the same runtime:
the ratio p50(B) / p50(A) should be about 1 (target <= 1.2).
"""

from __future__ import annotations

import time

import anyio

import actorflow as af

from .roundtrip import wait_for_hook
from .scenario import Config, ScenarioResult
from .stats import percentile, sketch, summary
from .workflows import hook_loop, observations

NAME = "history"
TITLE = "history independence (fsync on)"

SHORT_EVENTS = 10
LONG_EVENTS = 10_000


async def _measure(cfg: Config, samples: int) -> dict[str, list[float]]:
    observations.clear()
    data = cfg.scratch("history") / "data"
    # Events of run A before measuring: run_created, run_started, hook_created + 7 payloads.
    short_fill = SHORT_EVENTS - 3
    meter = cfg.meter("history", LONG_EVENTS + short_fill + 2 * samples)
    lat: dict[str, list[float]] = {"short": [], "long": []}
    try:
        async with af.Runtime(data, workflows=[hook_loop], durability="fsync",
                              passivate_after=float("inf")) as rt:  # fmt: skip
            short = await rt.start(hook_loop, "hist:short")
            long = await rt.start(hook_loop, "hist:long")
            await wait_for_hook(rt, "hist:short")
            await wait_for_hook(rt, "hist:long")
            for token, count in (("hist:short", short_fill), ("hist:long", LONG_EVENTS)):
                pending = iter(range(count))

                async def fill(token: str = token, pending: object = pending) -> None:
                    for i in pending:  # type: ignore[attr-defined]
                        await rt.resume_hook(token, {"fill": i})
                        meter.advance()

                async with anyio.create_task_group() as tg:
                    for _ in range(min(cfg.concurrency, 64)):
                        tg.start_soon(fill)
            await rt.wait_idle()
            for i in range(samples):
                order = (("short", "hist:short"), ("long", "hist:long"))
                for name, token in order if i % 2 == 0 else order[::-1]:
                    key = f"{name}:{i}"
                    sent = time.perf_counter()
                    await rt.resume_hook(token, {"k": key})
                    seen = await observations.wait_for(key)
                    lat[name].append(seen - sent)
                    meter.advance()
                    await rt.wait_idle()
            for token in ("hist:short", "hist:long"):
                await rt.resume_hook(token, {"stop": True})
            counts = [await short.result(timeout=30), await long.result(timeout=30)]
    finally:
        meter.close()
    # Each run's result counts the payloads it received: proof the histories were that long.
    lat["received"] = [float(c) for c in counts]
    return lat


def run(cfg: Config) -> ScenarioResult:
    """Measure the long/short resume latency ratio."""
    samples = 300 if cfg.quick else 2_000
    res = ScenarioResult(NAME, TITLE)
    res.params = {"short_history_events": SHORT_EVENTS, "long_history_events": LONG_EVENTS,
                  "samples_each": samples, "durability": "fsync"}  # fmt: skip
    lat = anyio.run(_measure, cfg, samples, backend=cfg.backend)
    ms = 1000.0
    s50, l50 = percentile(lat["short"], 50), percentile(lat["long"], 50)
    s99, l99 = percentile(lat["short"], 99), percentile(lat["long"], 99)
    d = "fsync"
    res.add(f"resume->observed p50, {SHORT_EVENTS} events (baseline)", s50 * ms, "ms",
            durability=d)  # fmt: skip
    res.add(f"resume->observed p50, {LONG_EVENTS} events", l50 * ms, "ms", l50 / s50,
            f"{SHORT_EVENTS}-event p50", "<= 1.2", d)  # fmt: skip
    res.add(f"resume->observed p99, {LONG_EVENTS} events", l99 * ms, "ms", l99 / s99,
            f"{SHORT_EVENTS}-event p99", durability=d)  # fmt: skip
    res.samples_ms = {f"{SHORT_EVENTS} events": sketch(lat["short"]),
                      f"{LONG_EVENTS} events": sketch(lat["long"])}  # fmt: skip
    received = [int(c) for c in lat["received"]]
    expected = [SHORT_EVENTS - 3 + samples + 1, LONG_EVENTS + samples + 1]
    res.extra = {"short_ms": summary(lat["short"]), "long_ms": summary(lat["long"]),
                 "payloads_received": received}  # fmt: skip
    if received != expected:
        res.notes.append(f"runs received {received} payloads, expected {expected}")
    return res
