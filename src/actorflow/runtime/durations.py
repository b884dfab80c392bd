"""Durations and instants as workflow code writes them: seconds, ``timedelta``, ``"90s"``, datetimes."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from ..errors import WorkflowDefinitionError

__all__ = ["Duration", "parse_duration", "resolve_deadline"]

Duration = float | int | timedelta | str | datetime

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")


def parse_duration(value: float | int | timedelta | str) -> float:
    """Seconds from ``5``, ``timedelta(minutes=5)`` or ``"5m"`` / ``"1h30m"`` / ``"7d"``.

    Raises:
        WorkflowDefinitionError: the value is negative or not a duration.
    """
    if isinstance(value, bool):
        raise WorkflowDefinitionError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        text = value.strip().lower()
        pos, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if text[pos : match.start()].strip():
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos == 0 or text[pos:].strip():
            raise WorkflowDefinitionError(
                f"{value!r} is not a duration; write e.g. '90s', '5m', '2h', '7d' or '1h30m'"
            )
    else:
        raise WorkflowDefinitionError(
            f"{value!r} is not a duration; use seconds, a timedelta or a string such as '5m'"
        )
    if seconds != seconds or seconds < 0:
        raise WorkflowDefinitionError(f"duration {value!r} is negative or not a number")
    return seconds


def resolve_deadline(value: Duration, now: float) -> float:
    """The epoch second at which a wait for ``value``, started at ``now``, ends.

    Raises:
        WorkflowDefinitionError: a naive datetime (ambiguous), or not a duration.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise WorkflowDefinitionError(
                f"{value!r} is a naive datetime; pass an aware one (e.g. tzinfo=timezone.utc)"
            )
        return value.timestamp()
    return now + parse_duration(value)
