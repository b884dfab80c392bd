"""Percentiles and the resource readings the scenarios share."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
from collections.abc import Sequence

__all__ = ["malloc_trim", "percentile", "rss_bytes", "sketch", "summary"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values_s: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, max and mean of latencies given in seconds, in milliseconds."""
    ms = [v * 1000.0 for v in values_s]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "max": max(ms),
        "mean": sum(ms) / len(ms),
    }


def sketch(values_s: Sequence[float], points: int = 500) -> list[float]:
    """At most ``points`` evenly spaced order statistics (ms): enough to plot a distribution."""
    ordered = sorted(v * 1000.0 for v in values_s)
    if len(ordered) <= points:
        return [round(v, 5) for v in ordered]
    step = (len(ordered) - 1) / (points - 1)
    return [round(ordered[round(i * step)], 5) for i in range(points)]


def rss_bytes() -> int:
    """Resident set size of this process now (``VmRSS`` of ``/proc/self/status``).

    Falls back to the peak RSS from ``resource`` where ``/proc`` is missing.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def malloc_trim() -> bool:
    """Collect garbage and give freed heap pages back to the OS (glibc only). True if trimmed."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
