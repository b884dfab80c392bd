"""How the inspector's pages show values: relative times, JSON, links. Pure functions.

Nothing here escapes HTML: the templates autoescape every value they print, so these return
plain text, and user values (payloads, metadata, names) reach the page only through that.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import orjson

__all__ = ["ago", "iso", "path_part", "pretty_json", "query_string"]


def iso(when: datetime | None) -> str:
    """``2026-12-04 18:40:12 UTC`` (seconds), or an empty string."""
    if when is None:
        return ""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(when: datetime | None, now: datetime) -> str:
    """``3 min ago``, ``in 2 h``, ``just now``: how far ``when`` is from ``now``."""
    if when is None:
        return ""
    seconds = (now - when).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 5:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if seconds >= size:
            amount = f"{int(seconds // size)} {unit}"
            return f"in {amount}" if future else f"{amount} ago"
    raise AssertionError("unreachable")


def pretty_json(value: Any) -> str:
    """A stored value as indented JSON (what is not JSON shows as its ``repr``)."""
    try:
        return orjson.dumps(
            value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=repr
        ).decode()
    except TypeError:
        return repr(value)


def path_part(text: str) -> str:
    """``text`` as one URL path segment (tokens may hold ``/``, spaces or ``?``)."""
    return quote(text, safe="")


def query_string(**params: str | int | None) -> str:
    """``?a=1&b=2`` from the parameters that are set, or an empty string."""
    kept = {name: value for name, value in params.items() if value not in (None, "")}
    return f"?{urlencode(kept)}" if kept else ""
