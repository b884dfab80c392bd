"""Ids and tokens.

Ids are a prefix plus 32 hex digits of 128 bits: 48 bits of milliseconds then 80 bits that count
up from a random start within the same millisecond, so ids sort by creation time and never repeat
within a process. Tokens are unguessable: 192 bits from ``secrets``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
import time

__all__ = ["derived_token", "id_time", "new_id", "new_token"]

_rng = random.Random(secrets.randbits(64))
_last_ms = 0
_last_ms_hex = "0" * 12
_counter = 0
_LOW = (1 << 80) - 1


def new_id(prefix: str) -> str:
    """A new time-ordered unique id such as ``wrun_01J...``."""
    global _last_ms, _last_ms_hex, _counter
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        _counter = (_counter + 1) & _LOW
    else:
        _last_ms = ms
        _last_ms_hex = f"{ms:012x}"  # 48 bits of milliseconds: until the year 10889
        # The low bits start random so ids of two processes in the same ms rarely share a prefix.
        _counter = _rng.getrandbits(79)
    # Hex, not base32: CPython's base32 encoder is pure Python and 20x slower, and ids are made
    # for every event on the hot path. Fixed width keeps them sorting by time: the 32 digits
    # of (ms << 80) | counter, the milliseconds' 12 formatted once per millisecond.
    return f"{prefix}{_last_ms_hex}{_counter:020x}"


def derived_token(seed: str, run_id: str, index: int) -> str:
    """The token of a run's ``index``-th durable call: unguessable (HMAC-SHA256 under the run's
    secret seed, 192 bits kept) and the same on every replay, so a webhook URL that escaped
    before its ``hook_created`` was durable still works after a crash."""
    digest = hmac.new(seed.encode(), f"{run_id}:{index}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode()


def new_token() -> str:
    """A new unguessable hook token (192 bits, URL-safe)."""
    return secrets.token_urlsafe(24)


def id_time(value: str, prefix: str) -> float | None:
    """When an id made by ``new_id(prefix)`` was made (seconds), or ``None`` if it is not one."""
    digits = value[len(prefix) :]
    if not value.startswith(prefix) or len(digits) != 32:
        return None
    try:
        return (int(digits, 16) >> 80) / 1000
    except ValueError:
        return None
