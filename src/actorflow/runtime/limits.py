"""The runtime's limits and the identity it stamps on hook records, set once at construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import PayloadTooLargeError

__all__ = ["Identity", "Limits"]


@dataclass(slots=True)
class Limits:
    mailbox_size: int = 1024
    max_backlog: int = 200_000
    max_payload_bytes: int = 4 * 1024 * 1024
    max_hooks_per_run: int = 10_000
    max_calls_per_run: int = 1_000_000

    def check_size(self, what: str, tree: Any) -> bytes:
        """Refuse a user value over ``max_payload_bytes`` (before anything is written).

        Returns the tree's JSON: the bytes that were measured are the bytes to store, so the
        caller hands them on (``encoded=``) and the value is serialized once.

        Raises:
            PayloadTooLargeError: it is larger.
        """
        encoded = orjson.dumps(tree)
        if len(encoded) > self.max_payload_bytes:
            raise PayloadTooLargeError(what, len(encoded), self.max_payload_bytes)
        return encoded


@dataclass(slots=True)
class Identity:
    """Who hands out hook records, and where webhooks are reached."""

    owner_id: str = "local"
    project_id: str = "default"
    environment: str = "development"
    #: The public base URL of webhooks (``None``: no URL); ``create_app`` may set it late.
    base_url: str | None = None
    #: The version of the code this runtime runs (``None``: any); stamped on each new run.
    version: str | None = None
