"""Output: the table on stdout, the JSON file, and (with matplotlib) a PNG of the latencies."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, TextIO

from .scenario import Row, ScenarioResult

__all__ = ["format_value", "print_summary", "print_table", "write_json", "write_plot"]


def format_value(value: float | None) -> str:
    """A figure with sensible precision: 23,045 / 12.3 / 0.456."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    text = f"{value:.3g}"
    return text if "." in text or "e" in text else f"{value:.2f}"


def _ratio(row: Row) -> str:
    if row.ratio is None:
        return ""
    text = f"{format_value(row.ratio)}x"
    return f"{text} {row.vs}" if row.vs else text


def _status(row: Row) -> str:
    ok = row.ok
    if ok is None:
        return ""
    return "ok" if ok else "MISS"


def _target(row: Row) -> str:
    if row.target is None:
        return ""
    return row.target if row.check == "ratio" else f"{row.target} (value)"


def print_table(results: list[ScenarioResult], out: TextIO = sys.stdout) -> None:
    """The figures, one block per scenario."""
    header = ("figure", "value", "unit", "ratio (vs baseline)", "target", "", "durability")
    labels = [len(row.label) for res in results for row in res.rows]
    widths = [max([50, *labels]), 12, 5, 34, 17, 4]

    def line(cells: tuple[str, ...]) -> str:
        parts = [
            cells[0].ljust(widths[0]),
            cells[1].rjust(widths[1]),
            cells[2].ljust(widths[2]),
            cells[3].ljust(widths[3]),
            cells[4].ljust(widths[4]),
            cells[5].ljust(widths[5]),
            cells[6],
        ]
        return " ".join(parts).rstrip()

    for res in results:
        out.write("\n")
        out.write(f"== {res.title} [{res.name}]  ({res.seconds:.1f} s)\n")
        if res.skipped:
            out.write(f"   skipped: {res.skipped}\n")
            continue
        out.write("   " + line(header) + "\n")
        for row in res.rows:
            cells = (row.label, format_value(row.value), row.unit, _ratio(row), _target(row),
                     _status(row), row.durability)  # fmt: skip
            out.write("   " + line(cells) + "\n")
        for note in res.notes:
            out.write(f"   note: {note}\n")
    out.flush()


def print_summary(results: list[ScenarioResult], out: TextIO = sys.stdout) -> None:
    """Every target and whether this run met it."""
    checked = [(res, row) for res in results for row in res.rows if row.ok is not None]
    if not checked:
        return
    out.write("\ntargets:\n")
    for res, row in checked:
        subject = row.ratio if row.check == "ratio" and row.ratio is not None else row.value
        out.write(f"  {'ok  ' if row.ok else 'MISS'} {res.name}: {row.label}: "
                  f"{format_value(subject)} (target {row.target})\n")  # fmt: skip
    met = sum(1 for _, row in checked if row.ok)
    out.write(f"  {met}/{len(checked)} targets met\n")
    out.flush()


def write_json(path: Path, meta: dict[str, Any], results: list[ScenarioResult]) -> None:
    """All figures, parameters, notes and latency sketches as one JSON document."""
    doc = {
        "meta": meta,
        "scenarios": [
            {
                "name": res.name,
                "title": res.title,
                "seconds": res.seconds,
                "skipped": res.skipped,
                "params": res.params,
                "rows": [row.to_json() for row in res.rows],
                "notes": res.notes,
                "extra": res.extra,
                "latency_sketch_ms": res.samples_ms,
            }
            for res in results
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n", encoding="utf-8")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


def write_plot(path: Path, results: list[ScenarioResult]) -> bool:
    """A PNG of the latency distributions (CDFs, log scale). False when matplotlib is missing."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]
        import matplotlib.ticker  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return False
    series = [res for res in results if res.samples_ms and not res.skipped]
    if not series:
        return False
    fig, axes = plt.subplots(len(series), 1, figsize=(9, 3.2 * len(series)), squeeze=False)
    for ax, res in zip(axes[:, 0], series, strict=True):
        for label, values in res.samples_ms.items():
            if not values:
                continue
            ordered = sorted(v for v in values if v > 0)
            if not ordered:
                continue
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            ax.step(ordered, fractions, where="post", label=label)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction")
        ax.set_title(res.title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
