"""What the query API answers with, and the checks on what it is asked.

``Runtime.list_runs``, ``list_hooks`` and ``list_events`` (and ``Run.info``) return these frozen
records, the same whichever store answers. Each has ``to_json()`` for the HTTP routes and the
CLI's ``--json``. Times are aware UTC ``datetime`` objects (ISO 8601 in JSON).

Cursors are opaque strings: pass a page's ``next_cursor`` back to get the page after it. A run
cursor is the id of the last run of the page: ids are time-ordered, so "older than the cursor"
is a stable position, and a run created while someone pages through a listing is never shown
in a later page (it is newer than every cursor) nor shifts the pages after it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

from ..errors import InvalidQueryError

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "STATUSES",
    "EventRecord",
    "HookSummary",
    "HookWait",
    "Page",
    "RunInfo",
    "RunQuery",
    "RunStatus",
    "RunSummary",
    "SleepWait",
    "StepWait",
    "WaitingOn",
    "check_after",
    "check_limit",
    "check_run_query",
    "decode_hook_cursor",
    "encode_hook_cursor",
    "from_timestamp",
    "to_micros",
]

RunStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
STATUSES: tuple[str, ...] = ("pending", "running", "completed", "failed", "cancelled")
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000

T = TypeVar("T")

_RUN_ID = re.compile(r"wrun_[0-9a-f]{32}")


def from_timestamp(ts: float | None) -> datetime | None:
    """An event time (seconds since the epoch) as an aware UTC datetime."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing, newest first. ``next_cursor`` is ``None`` on the last page."""

    items: tuple[T, ...]
    next_cursor: str | None

    def to_json(self) -> dict[str, Any]:
        """``{"items": [...], "next_cursor": ...}``."""
        return {
            "items": [item.to_json() for item in self.items],  # type: ignore[attr-defined]
            "next_cursor": self.next_cursor,
        }


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run as a listing shows it."""

    run_id: str
    workflow_name: str
    status: str
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    #: The version the run was started under (``run_created``'s ``version``), if any.
    version: str | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO 8601)."""
        return {
            "run_id": self.run_id,
            "workflow_name": self.workflow_name,
            "status": self.status,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "completed_at": _iso(self.completed_at),
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class HookWait:
    """A live hook the run may be waiting on."""

    token: str
    hook_id: str
    is_webhook: bool
    since: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "hook_id": self.hook_id,
            "is_webhook": self.is_webhook,
            "since": _iso(self.since),
        }


@dataclass(frozen=True, slots=True)
class SleepWait:
    """A durable timer of the run (a sleep, or a hook's timeout)."""

    wait_id: str
    until: datetime

    def to_json(self) -> dict[str, Any]:
        return {"wait_id": self.wait_id, "until": _iso(self.until)}


@dataclass(frozen=True, slots=True)
class StepWait:
    """A step of the run that has not finished: running, or waiting for its next attempt."""

    step_id: str
    name: str
    attempt: int
    started_at: datetime
    #: When the next attempt starts, while the step waits to be retried.
    next_retry_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "step_id": self.step_id,
            "name": self.name,
            "attempt": self.attempt,
            "started_at": _iso(self.started_at),
            "next_retry_at": _iso(self.next_retry_at),
        }


@dataclass(frozen=True, slots=True)
class WaitingOn:
    """What an unfinished run is suspended on (all empty once it has ended)."""

    hooks: tuple[HookWait, ...] = ()
    sleeps: tuple[SleepWait, ...] = ()
    steps: tuple[StepWait, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "hooks": [h.to_json() for h in self.hooks],
            "sleeps": [s.to_json() for s in self.sleeps],
            "steps": [s.to_json() for s in self.steps],
        }


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run in full: its summary and what it is waiting on (``await run.info()``)."""

    run_id: str
    workflow_name: str
    status: str
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    version: str | None
    waiting_on: WaitingOn

    @property
    def summary(self) -> RunSummary:
        return RunSummary(self.run_id, self.workflow_name, self.status, self.created_at,
                          self.started_at, self.completed_at, self.version)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        out = self.summary.to_json()
        out["waiting_on"] = self.waiting_on.to_json()
        return out


@dataclass(frozen=True, slots=True)
class HookSummary:
    """A live hook as ``list_hooks`` shows it."""

    token: str
    hook_id: str
    run_id: str
    kind: Literal["hook", "webhook"]
    created_at: datetime
    #: Payloads accepted by the hook so far (``hook_received`` events).
    received: int
    #: Payloads delivered and not yet taken by the workflow (``None``: the run is owned by
    #: another process, which alone knows).
    buffered: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "hook_id": self.hook_id,
            "run_id": self.run_id,
            "kind": self.kind,
            "created_at": _iso(self.created_at),
            "received": self.received,
            "buffered": self.buffered,
        }


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event of a run's timeline. ``seq`` counts the run's events from 1.

    ``data`` holds the event's data with user values decrypted; a value the reader has no key
    for is the string ``"encrypted"``.
    """

    seq: int
    event_id: str
    run_id: str
    type: str
    correlation_id: str | None
    created_at: datetime
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event_id": self.event_id,
            "run_id": self.run_id,
            "type": self.type,
            "correlation_id": self.correlation_id,
            "created_at": _iso(self.created_at),
            "data": self.data,
        }


# -- what may be asked ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunQuery:
    """A checked ``list_runs`` request (see :func:`check_run_query`)."""

    status: str | None = None
    workflow: str | None = None
    version: str | None = None
    #: Exclusive bounds in whole microseconds since the epoch: the precision times are shown
    #: with, so a run's own ``created_at`` given back as a bound excludes exactly that run.
    created_after: int | None = None
    created_before: int | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    def matches(self, workflow: str, version: str | None, created_at: float) -> bool:
        """Whether a run passes the filters other than status (the caller indexes those)."""
        if self.workflow is not None and workflow != self.workflow:
            return False
        if self.version is not None and version != self.version:
            return False
        if self.created_after is None and self.created_before is None:
            return True
        micros = to_micros(created_at)
        if self.created_after is not None and not micros > self.created_after:
            return False
        return self.created_before is None or micros < self.created_before


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(ts: float) -> int:
    """An event time in whole microseconds, rounded as ``datetime.fromtimestamp`` rounds."""
    return (datetime.fromtimestamp(ts, UTC) - _EPOCH) // _MICROSECOND


def check_limit(limit: Any) -> int:
    """``limit`` as an int in 1..``MAX_LIMIT``.

    Raises:
        InvalidQueryError: not an integer in range.
    """
    if isinstance(limit, str) and limit.strip().isdigit():
        limit = int(limit)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidQueryError(f"limit must be an integer from 1 to {MAX_LIMIT}, not {limit!r}")
    return limit


def check_after(after: Any) -> int:
    """``after`` (a ``seq`` of ``list_events``) as an int >= 0.

    Raises:
        InvalidQueryError: not a non-negative integer.
    """
    if isinstance(after, str) and after.strip().isdigit():
        after = int(after)
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise InvalidQueryError(
            f"after must be a non-negative integer (the seq of the last event seen), not {after!r}"
        )
    return after


def _check_time(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidQueryError(
                f"{name} must be an ISO 8601 time with a zone (2026-12-04T10:00:00Z), not {value!r}"
            ) from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidQueryError(
                f"{name} must be an aware datetime (with a time zone), not {value!r}"
            )
        return (value - _EPOCH) // _MICROSECOND
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return to_micros(float(value))
        except (OverflowError, ValueError, OSError):
            raise InvalidQueryError(f"{name} is out of range: {value!r}") from None
    raise InvalidQueryError(
        f"{name} must be an aware datetime, an ISO 8601 string or seconds since the epoch, "
        f"not {value!r}"
    )


def _check_name(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 1024 or "\x00" in value:
        raise InvalidQueryError(
            f"{name} must be a non-empty string (up to 1,024 characters), not {value!r}"
        )
    return value


def check_run_query(
    *,
    status: Any = None,
    workflow: Any = None,
    version: Any = None,
    created_after: Any = None,
    created_before: Any = None,
    limit: Any = DEFAULT_LIMIT,
    cursor: Any = None,
) -> RunQuery:
    """Check and normalise the arguments of ``list_runs``.

    Raises:
        InvalidQueryError: an unknown status, an empty name, a bad time, limit or cursor.
    """
    if status is not None and status not in STATUSES:
        raise InvalidQueryError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    if cursor is not None and (not isinstance(cursor, str) or not _RUN_ID.fullmatch(cursor)):
        raise InvalidQueryError(
            f"cursor {cursor!r} is not one this API gave out; pass a page's next_cursor "
            "unchanged, or no cursor for the first page"
        )
    if version is not None and not isinstance(version, str):
        version = str(version)
    query = RunQuery(
        status=status,
        workflow=_check_name("workflow", workflow),
        version=_check_name("version", version),
        created_after=_check_time("created_after", created_after),
        created_before=_check_time("created_before", created_before),
        limit=check_limit(limit),
        cursor=cursor,
    )
    return query


def encode_hook_cursor(token: str) -> str:
    """The cursor after a hook: its token, URL-safe (tokens may hold ``/`` or spaces)."""
    return base64.urlsafe_b64encode(token.encode("utf-8")).decode("ascii").rstrip("=")


def decode_hook_cursor(cursor: Any) -> str | None:
    """The token a hook cursor stands for.

    Raises:
        InvalidQueryError: not a cursor this API gave out.
    """
    if cursor is None:
        return None
    try:
        if not isinstance(cursor, str) or not cursor or len(cursor) > 2048:
            raise ValueError(cursor)
        padded = cursor + "=" * (-len(cursor) % 4)
        token = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
        if encode_hook_cursor(token) != cursor:
            raise ValueError(cursor)
    except (ValueError, binascii.Error, UnicodeError):
        raise InvalidQueryError(
            f"cursor {cursor!r} is not one this API gave out; pass a page's next_cursor "
            "unchanged, or no cursor for the first page"
        ) from None
    return token


def version_of(value: Any) -> str | None:
    """A ``run_created`` version as text (``None``: unset)."""
    return None if value is None else str(value)


def page_of(items: Sequence[T], limit: int, key: Any) -> Page[T]:
    """A page from up to ``limit + 1`` items: the extra one only says another page exists."""
    if len(items) > limit:
        kept = tuple(items[:limit])
        return Page(kept, key(kept[-1]))
    return Page(tuple(items), None)
