"""``python -m benchmarks``: run the scenarios, print the table, write JSON (and a PNG).

Usage::

    python -m benchmarks --quick              # every scenario, small sizes (< 1 minute)
    python -m benchmarks                      # full sizes
    python -m benchmarks --only hook,history  # a subset (also: --only hook --only history)
    python -m benchmarks --backend trio       # anyio backend (default asyncio)
    python -m benchmarks --list               # scenario names
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from .disk import MemoryBackedError, default_work_dir, filesystem_of, require_disk
from .logs import configure_logging
from .report import print_summary, print_table, write_json, write_plot
from .scenario import Config, ScenarioResult

__all__ = ["SCENARIOS", "main"]

#: Scenario modules, in the order they run. Each has NAME, TITLE and run(Config) -> ScenarioResult.
SCENARIOS = (
    "hook", "history", "steps", "scale", "encryption", "memory", "recovery", "webhook", "peer",
    "listing", "metrics", "streams", "retention",
)  # fmt: skip
_MODULES = {"peer": "peer_dbos"}

_RESULTS = Path(__file__).resolve().parent / "results"


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"benchmarks.{_MODULES.get(name, name)}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: the whole set in < 1 min")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help=f"run only these scenarios (comma-separated or repeated): "
                   f"{', '.join(SCENARIOS)}")  # fmt: skip
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    p.add_argument("--concurrency", type=int, default=128,
                   help="concurrent resumers in the hook round trips (default 128)")  # fmt: skip
    p.add_argument("--work-dir", type=Path, default=None,
                   help="scratch folder for logs (default benchmarks/results/tmp); must be on "
                   "a real disk, not tmpfs")  # fmt: skip
    p.add_argument("--results-dir", type=Path, default=_RESULTS,
                   help="where <timestamp>.json (and .png) go (default benchmarks/results)")  # fmt: skip
    p.add_argument("--keep-data", action="store_true", help="keep the scratch logs afterwards")
    p.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return p.parse_args(argv)


def _selected(only: list[str]) -> list[str]:
    if not only:
        return list(SCENARIOS)
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(
            f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}"
        )
    return [n for n in SCENARIOS if n in names]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parent, timeout=5)  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=Path(__file__).parent,
                               timeout=5)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _meta(args: argparse.Namespace, cfg: Config, names: list[str]) -> dict[str, Any]:
    fstype, device = filesystem_of(cfg.work_dir)
    import actorflow

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "mode": "quick" if cfg.quick else "full",
        "backend": cfg.backend,
        "concurrency": cfg.concurrency,
        "scenarios": names,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "actorflow": getattr(actorflow, "__version__", "?"),
        "git": _git_commit(),
        "work_dir": str(cfg.work_dir),
        "filesystem": fstype,
        "device": device,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios; 0 when all ran, 1 when one crashed, 2 when the scratch
    folder is memory-backed (targets missed do not change the code)."""
    args = _parse(argv)
    if args.list:
        for name in SCENARIOS:
            mod = _module(name)
            print(f"{name:12} {mod.TITLE}")
        return 0
    names = _selected(args.only)
    configure_logging()
    work_dir = (args.work_dir or default_work_dir()).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        require_disk(work_dir)
    except MemoryBackedError as exc:
        print(f"python -m benchmarks: {exc}", file=sys.stderr)
        return 2
    cfg = Config(quick=args.quick, backend=args.backend, work_dir=work_dir,
                 concurrency=args.concurrency, progress=not args.no_progress)  # fmt: skip
    meta = _meta(args, cfg, names)
    print(f"actorflow benchmarks: {meta['mode']} mode, backend {cfg.backend}, "
          f"{meta['cpus']} CPUs, python {meta['python']}, git {meta['git']}")  # fmt: skip
    print(f"logs in {work_dir} ({meta['filesystem']} on {meta['device']})")
    load = _load()
    if load is not None and load > 0.5 * (os.cpu_count() or 1):
        print(f"WARNING: load average {load} before starting: other work shares the CPUs, so "
              "absolute figures will be low and noisy (the ratios hold better)")  # fmt: skip
    meta["load_average_start"] = load
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results: list[ScenarioResult] = []
    crashed: list[str] = []
    began = time.perf_counter()
    try:
        for name in names:
            mod = _module(name)
            sys.stderr.write(f"-- {name}: {mod.TITLE}\n")
            sys.stderr.flush()
            t0 = time.perf_counter()
            load_before = _load()
            try:
                res: ScenarioResult = mod.run(cfg)
            except Exception as exc:  # one broken scenario must not lose the others' figures
                res = ScenarioResult(name, mod.TITLE, skipped=f"failed: {exc!r}")
                sys.stderr.write(f"   {name} failed: {exc!r}\n")
                crashed.append(name)
            res.seconds = time.perf_counter() - t0
            res.extra["load_average"] = {"before": load_before, "after": _load()}
            results.append(res)
            print_table([res])
    finally:
        if not args.keep_data:
            shutil.rmtree(work_dir, ignore_errors=True)
    meta["seconds"] = time.perf_counter() - began
    print_summary(results)
    json_path = args.results_dir / f"{stamp}.json"
    write_json(json_path, meta, results)
    print(f"\nJSON: {json_path}")
    png = json_path.with_suffix(".png")
    if write_plot(png, results):
        print(f"plot: {png}")
    else:
        print("plot: skipped (matplotlib is not installed)")
    print(f"total {meta['seconds']:.1f} s")
    if crashed:
        print(f"FAILED: {', '.join(crashed)} crashed (see above); their figures are missing")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
