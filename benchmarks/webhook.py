"""Scenario "webhook": delegates to ``benchmarks/webhook_http.py`` when that file exists.

That module (written alongside the HTTP layer) measures concurrent HTTP clients posting to
webhook URLs through Hypercorn against a bare Quart route on the same server. Its contract with
this harness: a function ``run(quick: bool) -> dict`` (it may also take ``backend: str``, and may
be ``async``). The dict may hold ``rows`` (each like ``Row.to_json()``: ``label``, ``value``,
``unit``, ``ratio``, ``vs``, ``target``, ``check``, ``durability``), ``params``, ``notes``,
``samples_ms`` and ``extra``; a dict without ``rows`` is shown as one row per numeric item.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import anyio

from .scenario import Config, Row, ScenarioResult

NAME = "webhook"
TITLE = "webhook over HTTP (Hypercorn) vs a bare Quart route"

_MODULE = Path(__file__).with_name("webhook_http.py")


def run(cfg: Config) -> ScenarioResult:
    """Run ``webhook_http.run`` and turn its dict into table rows, or skip with the reason."""
    if not _MODULE.exists():
        return ScenarioResult(NAME, TITLE, skipped="benchmarks/webhook_http.py is not there yet")
    module = importlib.import_module("benchmarks.webhook_http")
    fn = getattr(module, "run", None)
    if fn is None:
        if hasattr(module, "bench_server"):
            return _from_bench_server(module, cfg)
        return ScenarioResult(
            NAME, TITLE, skipped="benchmarks/webhook_http.py has no run(quick: bool) function"
        )
    kwargs: dict[str, Any] = {}
    if "backend" in inspect.signature(fn).parameters:
        kwargs["backend"] = cfg.backend
    if inspect.iscoroutinefunction(fn):
        out = anyio.run(lambda: fn(cfg.quick, **kwargs), backend=cfg.backend)
    else:
        out = fn(cfg.quick, **kwargs)
    return from_dict(out)


def _from_bench_server(module: Any, cfg: Config) -> ScenarioResult:
    """Drive ``webhook_http.bench_server`` as its own ``main()`` does, and tabulate it.

    Used while ``webhook_http.py`` offers no ``run(quick)``: same sizes as its command line
    (quick: 16 clients, 2 rounds of 1 s per route; full: 32 clients, 3 rounds of 3 s).
    """
    clients, seconds, rounds, warmup = (16, 1.0, 2, 0.3) if cfg.quick else (32, 3.0, 3, 1.0)
    res = ScenarioResult(NAME, TITLE)
    res.params = {"clients": clients, "seconds_per_round": seconds, "rounds": rounds,
                  "server": "Hypercorn, asyncio worker, 127.0.0.1 (its own choice of backend)",
                  "driver": "webhook_http.bench_server"}  # fmt: skip
    for durability in ("fsync", "none"):
        results = module.bench_server(
            durability, clients, seconds, warmup, rounds, work_dir=cfg.work_dir
        )
        by_route = {r.route: r for r in results}
        bare, hook = by_route["bare Quart"], by_route["actorflow webhook"]
        target = ">= 0.85" if durability == "fsync" else None
        res.add(f"bare Quart req/s (baseline), {durability}", bare.rps, "/s", durability=durability)
        res.add(f"actorflow webhook req/s, {durability}", hook.rps, "/s", hook.rps / bare.rps,
                "bare Quart req/s", durability=durability)  # fmt: skip
        if bare.server_cpu_us and hook.server_cpu_us:
            # The target is judged on CPU: req/s on a shared 2-core machine moves with others'
            # load, the server's CPU per request much less.
            res.add(f"actorflow webhook server CPU/request, {durability}", hook.server_cpu_us,
                    "us", bare.server_cpu_us / hook.server_cpu_us,
                    "bare Quart requests per server CPU second", target, durability)  # fmt: skip
        res.add(f"actorflow webhook p50, {durability}", hook.p50_ms, "ms",
                hook.p50_ms / bare.p50_ms, "bare Quart p50", durability=durability)  # fmt: skip
        res.add(f"actorflow webhook p99, {durability}", hook.p99_ms, "ms",
                hook.p99_ms / bare.p99_ms, "bare Quart p99", durability=durability)  # fmt: skip
        errors = bare.errors + hook.errors
        if errors:
            res.notes.append(f"{errors} requests failed with durability {durability}")
        res.extra[durability] = [vars(r) for r in results]
    res.notes.append('durability "none" rows skip fsync: comparison only')
    return res


def from_dict(out: Any) -> ScenarioResult:
    """A ``ScenarioResult`` from what ``webhook_http.run`` returned."""
    if isinstance(out, ScenarioResult):
        return out
    res = ScenarioResult(NAME, str(out.get("title", TITLE)) if isinstance(out, dict) else TITLE)
    if not isinstance(out, dict):
        res.notes.append(f"webhook_http.run returned {type(out).__name__}, not a dict")
        return res
    if out.get("skipped"):
        res.skipped = str(out["skipped"])
    rows = out.get("rows")
    if isinstance(rows, list):
        for item in rows:
            res.rows.append(Row(
                label=str(item.get("label", "?")),
                value=item.get("value"),
                unit=str(item.get("unit", "")),
                ratio=item.get("ratio"),
                vs=str(item.get("vs") or ""),
                target=item.get("target"),
                durability=str(item.get("durability") or ""),
                check=str(item.get("check") or item.get("target_applies_to") or "ratio"),
            ))  # fmt: skip
    else:
        for key, value in out.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                res.rows.append(Row(label=str(key), value=float(value)))
    res.params = dict(out.get("params") or {})
    res.notes = [str(n) for n in out.get("notes") or []]
    res.samples_ms = dict(out.get("samples_ms") or {})
    res.extra = dict(out.get("extra") or {})
    return res
