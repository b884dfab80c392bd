"""How a blocked fiber is resumed: with a value, with an exception, or decided later."""

from __future__ import annotations

__all__ = ["DEFER", "SEND", "THROW"]

#: ``coro.send(value)``; ``coro.throw(value)``; a dispose's waiter, decided when it comes up.
SEND, THROW, DEFER = 0, 1, 2
