"""Why a runtime can no longer work, once it cannot, and who waits to hear it."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

__all__ = ["Failure"]

logger = logging.getLogger("actorflow.runtime")


class Failure:
    """Set once, for good: the runtime lost its lease, or its shared log failed."""

    def __init__(self, on_fail: Callable[[BaseException], None]) -> None:
        self.cause: BaseException | None = None
        self._on_fail = on_fail
        self._event: anyio.Event | None = None

    def fail(self, exc: BaseException) -> None:
        if self.cause is None:
            self.cause = exc
            logger.critical("actorflow runtime stopped working: %s", exc)
            if self._event is not None:
                self._event.set()
        self._on_fail(exc)

    async def wait(self) -> BaseException:
        if self.cause is None:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        assert self.cause is not None
        return self.cause
