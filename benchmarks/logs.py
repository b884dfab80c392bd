"""Logging for benchmark runs: warnings on stderr, each distinct message once."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]


class _Once(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self._seen:
            return False
        self._seen.add(text)
        return True


def configure_logging() -> None:
    """Show actorflow's warnings (e.g. the durability="none" one) once each, on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("  [%(name)s] %(levelname)s %(message)s"))
    handler.addFilter(_Once())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
