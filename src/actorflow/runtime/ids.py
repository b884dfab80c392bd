"""Ids and tokens.

Ids are a prefix plus 26 Crockford base32 characters: 48 bits of milliseconds then 80 bits that
count up from a random start within the same millisecond, so ids sort by creation time and never
repeat within a process. Tokens are unguessable: 192 bits from ``secrets``.
"""

from __future__ import annotations

import random
import secrets
import time

__all__ = ["new_id", "new_token"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_rng = random.Random(secrets.randbits(64))
_last_ms = 0
_counter = 0


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """A new time-ordered unique id such as ``wrun_01J...``."""
    global _last_ms, _counter
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        ms = _last_ms
        _counter += 1
    else:
        _last_ms = ms
        # The low bits start random so ids of two processes in the same ms rarely share a prefix.
        _counter = _rng.getrandbits(79)
    return prefix + _encode(ms, 10) + _encode(_counter & ((1 << 80) - 1), 16)


def new_token() -> str:
    """A new unguessable hook token (192 bits, URL-safe)."""
    return secrets.token_urlsafe(24)
