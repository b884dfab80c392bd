"""Ids and tokens.

Ids are a prefix plus 32 hex digits of 128 bits: 48 bits of milliseconds then 80 bits that count
up from a random start within the same millisecond, so ids sort by creation time and never repeat
within a process. Tokens are unguessable: 192 bits from ``secrets``.
"""

from __future__ import annotations

import random
import secrets
import time

__all__ = ["new_id", "new_token"]

_rng = random.Random(secrets.randbits(64))
_last_ms = 0
_counter = 0
_LOW = (1 << 80) - 1


def new_id(prefix: str) -> str:
    """A new time-ordered unique id such as ``wrun_01J...``."""
    global _last_ms, _counter
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        ms = _last_ms
        _counter = (_counter + 1) & _LOW
    else:
        _last_ms = ms
        # The low bits start random so ids of two processes in the same ms rarely share a prefix.
        _counter = _rng.getrandbits(79)
    # Hex, not base32: CPython's base32 encoder is pure Python and 20x slower, and ids are made
    # for every event on the hot path. Fixed width keeps them sorting by time.
    return f"{prefix}{(ms << 80) | _counter:032x}"


def new_token() -> str:
    """A new unguessable hook token (192 bits, URL-safe)."""
    return secrets.token_urlsafe(24)
