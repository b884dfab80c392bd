"""Teach the codec your own types: ``actorflow.codec.register(cls, name=..., encode=..., decode=...)``.

Classes may instead define ``__actorflow_encode__(self)`` and a classmethod
``__actorflow_decode__(cls, data)``; dataclasses, enums and pydantic models need neither.
"""

from __future__ import annotations

from .runtime.codec import register

__all__ = ["register"]
