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
