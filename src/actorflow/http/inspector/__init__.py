"""The web inspector: runs, hooks and timelines as server-rendered pages, behind the resume
secret. Templates and the stylesheet ship inside the package (no build step, no CDN)."""

from __future__ import annotations

from .views import COOKIE, add_inspector

__all__ = ["COOKIE", "add_inspector"]
