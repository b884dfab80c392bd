"""A small progress display on stderr: a live line on a terminal, milestones otherwise."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """Counts work done out of ``total`` and shows it at most 10 times a second."""

    def __init__(self, label: str, total: int, *, enabled: bool = True) -> None:
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.enabled = enabled
        self._tty = sys.stderr.isatty()
        self._last = 0.0
        self._milestone = 0
        self._began = time.perf_counter()

    @staticmethod
    def note(text: str) -> None:
        """A line on stderr (under a live progress line, it starts a fresh line)."""
        sys.stderr.write(f"  {text}\n")
        sys.stderr.flush()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._tty:
            now = time.perf_counter()
            if now - self._last >= 0.1 or self.done >= self.total:
                self._last = now
                self._draw()
        else:
            quarter = min(4, self.done * 4 // self.total)
            if quarter > self._milestone:
                self._milestone = quarter
                self.note(f"{self.label}: {self.done}/{self.total}")

    def _draw(self) -> None:
        width = 24
        filled = width * min(self.done, self.total) // self.total
        bar = "#" * filled + "." * (width - filled)
        secs = time.perf_counter() - self._began
        sys.stderr.write(f"\r  {self.label} [{bar}] {self.done}/{self.total} {secs:5.1f}s")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self) -> None:
        """End the live line (if the count never reached the total)."""
        if self.enabled and self._tty and self.done < self.total:
            sys.stderr.write("\n")
            sys.stderr.flush()
