"""Manual webhook responses awaited by HTTP callers, keyed by the request's event id."""

from __future__ import annotations

import anyio

from .core.events import Event

__all__ = ["WebhookResponses"]


class WebhookResponses:
    """Manual responses awaited by HTTP callers, keyed by the request's event id."""

    def __init__(self) -> None:
        self._waiters: dict[str, anyio.Event] = {}

    def waiter(self, request_event_id: str) -> anyio.Event:
        found = self._waiters.get(request_event_id)
        if found is None:
            found = self._waiters[request_event_id] = anyio.Event()
        return found

    def renew(self, request_event_id: str) -> anyio.Event:
        """A fresh waiter for a request whose waiter was set (woken; keep waiting)."""
        found = self._waiters[request_event_id] = anyio.Event()
        return found

    def release(self, request_event_id: str) -> None:
        self._waiters.pop(request_event_id, None)

    def poke(self, request_event_id: str) -> None:
        """Wake whoever waits on a request: its response may be committed (another node's)."""
        waiter = self._waiters.get(request_event_id)
        if waiter is not None:
            waiter.set()

    def responded(self, event: Event) -> None:
        waiter = self._waiters.pop(str(event.data.get("request_event_id")), None)
        if waiter is not None:
            waiter.set()
