"""What a scenario receives (``Config``) and what it returns (``ScenarioResult`` of ``Row``s)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .progress import Progress

__all__ = ["Config", "Row", "ScenarioResult", "Timer"]


@dataclass(frozen=True)
class Config:
    """Options of one harness invocation, shared by every scenario."""

    quick: bool
    backend: str  # "asyncio" or "trio"
    work_dir: Path  # disk-backed scratch space; each scenario makes and removes a subfolder
    concurrency: int  # concurrent resumers in the hook round trips
    progress: bool = True

    def scratch(self, name: str) -> Path:
        """A fresh, empty folder under ``work_dir`` for one scenario's data."""
        path = self.work_dir / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def meter(self, label: str, total: int) -> Progress:
        """A progress display on stderr (silent with ``--no-progress``)."""
        return Progress(label, total, enabled=self.progress)


@dataclass
class Row:
    """One figure of the table.

    ``ratio`` compares ``value`` with the named baseline (``vs``); ``target`` is the rule that
    ``check`` (the ratio, or the raw value) must meet, e.g. ``"<= 2"``.
    """

    label: str
    value: float | None
    unit: str = ""
    ratio: float | None = None
    vs: str = ""
    target: str | None = None
    durability: str = ""
    check: str = "ratio"  # what ``target`` applies to: "ratio", or "value" (the raw figure)

    @property
    def ok(self) -> bool | None:
        if self.target is None:
            return None
        subject = self.ratio if self.check == "ratio" and self.ratio is not None else self.value
        if subject is None:
            return None
        op, _, limit = self.target.partition(" ")
        bound = float(limit)
        return subject <= bound if op == "<=" else subject >= bound

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "ratio": self.ratio,
            "vs": self.vs or None,
            "target": self.target,
            "target_applies_to": self.check if self.target else None,
            "ok": self.ok,
            "durability": self.durability or None,
        }


@dataclass
class ScenarioResult:
    """What one scenario measured. ``skipped`` says why it did not run."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    samples_ms: dict[str, list[float]] = field(default_factory=dict)  # latency series, for plots
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    seconds: float = 0.0

    def add(self, *args: Any, **kwargs: Any) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row


class Timer:
    """``perf_counter`` seconds between ``start`` and ``stop`` (or now)."""

    def __init__(self) -> None:
        self.began = time.perf_counter()
        self.ended: float | None = None

    def stop(self) -> float:
        self.ended = time.perf_counter()
        return self.elapsed

    @property
    def elapsed(self) -> float:
        return (self.ended or time.perf_counter()) - self.began


@contextmanager
def phase(label: str, enabled: bool = True) -> Iterator[Callable[[], float]]:
    """Announce a phase on stderr and time it."""
    timer = Timer()
    if enabled:
        Progress.note(f"{label} ...")
    yield lambda: timer.elapsed
    if enabled:
        Progress.note(f"{label}: {timer.stop():.1f} s")
