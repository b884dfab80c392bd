"""Scenario "listing": list_runs(status="failed", limit=50) among 1,000,000 runs.

The runs are folded into a ``State`` from synthetic events (``run_created``, ``run_started``
and an end: 1 in 100 runs failed, spread evenly, the rest completed), as recovery folds a
log, without writing the log first (a million runs' log takes minutes to write and is not what
is measured). The figure is ``MemoryCatalog.list_runs``, the work ``Runtime.list_runs`` does
after its journal flush (a no-op when nothing waits for disk). The baseline, in the same run,
is the same page found without the index: a scan of every run for the status, sorted newest
first, which is what listing costs without ``run_index.py``. Also: the one-time build of the
index at the first listing, and a deep page (the 100th, through cursors).
"""

from __future__ import annotations

import gc
import time

from actorflow.runtime.catalog import MemoryCatalog
from actorflow.runtime.core import events as ev
from actorflow.runtime.core.events import Event
from actorflow.runtime.ids import new_id
from actorflow.runtime.payloads import Payloads
from actorflow.runtime.query import check_run_query
from actorflow.runtime.state import State

from .scenario import Config, ScenarioResult
from .stats import percentile

NAME = "listing"
TITLE = "list_runs(status='failed', limit=50) among 1,000,000 runs (in memory)"

FAILED_EVERY = 100


def _fold(runs: int) -> State:
    state = State()
    apply = state.apply
    t = 1.7e9
    for i in range(runs):
        run_id = new_id("wrun_")
        apply(Event("e", run_id, ev.RUN_CREATED, None, t, {"workflow": f"wf{i % 10}"}))
        apply(Event("e", run_id, ev.RUN_STARTED, None, t, {}))
        end = ev.RUN_FAILED if i % FAILED_EVERY == 0 else ev.RUN_COMPLETED
        apply(Event("e", run_id, end, None, t, {}))
        t += 0.001
    return state


def _scan_page(state: State, limit: int) -> list[str]:
    """The page without an index: every run checked, the matches sorted newest first."""
    found = [r.run_id for r in state.runs.values() if r.status == "failed"]
    found.sort(reverse=True)
    return found[:limit]


def _time(fn: object, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        began = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - began)
    return out


def run(cfg: Config) -> ScenarioResult:
    """Measure a page of failed runs with and without the index."""
    runs = 100_000 if cfg.quick else 1_000_000
    res = ScenarioResult(NAME, TITLE)
    res.params = {"runs": runs, "failed": runs // FAILED_EVERY, "limit": 50}
    gc.disable()
    try:
        state = _fold(runs)
    finally:
        gc.enable()
    gc.freeze()
    catalog = MemoryCatalog(state, lambda positions: [], Payloads(None))
    query = check_run_query(status="failed", limit=50)

    began = time.perf_counter()
    first = catalog.runs_page(query)
    build = time.perf_counter() - began
    indexed = _time(lambda: catalog.runs_page(query), 2_000)
    baseline = _time(lambda: _scan_page(state, 50), 5 if not cfg.quick else 20)
    assert [r.run_id for r in first.items] == _scan_page(state, 50), "the pages differ"

    cursor = None
    for _ in range(99):
        cursor = catalog.runs_page(
            check_run_query(status="failed", limit=50, cursor=cursor)
        ).next_cursor
    deep_query = check_run_query(status="failed", limit=50, cursor=cursor)
    deep = _time(lambda: catalog.runs_page(deep_query), 2_000)
    every = check_run_query(limit=50)
    unfiltered = _time(lambda: catalog.runs_page(every), 2_000)

    ms = 1000.0
    p50, p99 = percentile(indexed, 50), percentile(indexed, 99)
    scan = percentile(baseline, 50)
    res.add("scan of every run for the page (baseline)", scan * ms, "ms")
    res.add("list_runs(status='failed', limit=50) p50", p50 * ms, "ms", p50 / scan,
            "scan p50", "<= 10", check="value")  # fmt: skip
    res.add("the same, p99", p99 * ms, "ms", p99 / scan, "scan p50", "<= 10", check="value")
    res.add("100th page of failed runs (by cursor) p50", percentile(deep, 50) * ms, "ms",
            percentile(deep, 50) / scan, "scan p50")  # fmt: skip
    res.add("list_runs(limit=50), no filter, p50", percentile(unfiltered, 50) * ms, "ms",
            percentile(unfiltered, 50) / scan, "scan p50")  # fmt: skip
    res.add("index build at the first listing (once)", build * ms, "ms")
    res.notes.append("in memory (MemoryCatalog over a folded State); no fsync is involved")

    return res
