"""The fold's runs, hooks and events as the query API's records (``query.py``).

Pure functions over ``State``: the memory catalog lists with them, and ``Run.info()`` describes
any run with them, whether this process owns it or folded it from another process's events.
"""

from __future__ import annotations

from typing import Any

from ..errors import DecryptionError
from .core.events import USER_VALUE_KEYS, Event
from .payloads import Payloads
from .query import (
    EventRecord,
    HookSummary,
    HookWait,
    RunInfo,
    RunSummary,
    SleepWait,
    StepWait,
    WaitingOn,
    from_timestamp,
)
from .state import HookEntry, RunState, State

__all__ = ["ENCRYPTED", "event_record", "hook_summary", "run_info", "run_summary"]

#: What a user value shows as when the reader has no key for it.
ENCRYPTED = "encrypted"


def run_summary(run: RunState) -> RunSummary:
    """A run as listings show it."""
    terminal = run.terminal
    created = from_timestamp(run.created_at)
    assert created is not None
    return RunSummary(
        run_id=run.run_id,
        workflow_name=run.workflow_name,
        status=run.status,
        created_at=created,
        started_at=from_timestamp(run.started_at),
        completed_at=from_timestamp(terminal.created_at) if terminal is not None else None,
        version=run.version,
    )


def run_info(run: RunState, state: State) -> RunInfo:
    """A run in full, with what it waits on, from the state that holds it."""
    summary = run_summary(run)
    hooks: list[HookWait] = []
    for token in run.hooks or ():
        entry = state.tokens.get(token)
        if entry is not None and entry.run_id == run.run_id:
            since = from_timestamp(entry.created_at)
            assert since is not None
            hooks.append(HookWait(token, entry.hook_id, entry.webhook is not None, since))
    sleeps: list[SleepWait] = []
    steps: list[StepWait] = []
    for pending_id in run.pending or ():
        timer = state.timers.get(pending_id)
        if timer is not None:
            until = from_timestamp(timer.resume_at)
            assert until is not None
            sleeps.append(SleepWait(timer.wait_id, until))
            continue
        step = state.steps.get(pending_id)
        if step is not None:
            started = from_timestamp(step.started_at)
            assert started is not None
            retry = from_timestamp(step.retry_at) if step.retry_at else None
            steps.append(StepWait(step.step_id, step.name, step.attempt, started, retry))
    return RunInfo(
        run_id=summary.run_id,
        workflow_name=summary.workflow_name,
        status=summary.status,
        created_at=summary.created_at,
        started_at=summary.started_at,
        completed_at=summary.completed_at,
        version=summary.version,
        waiting_on=WaitingOn(tuple(hooks), tuple(sleeps), tuple(steps)),
    )


def hook_summary(entry: HookEntry, *, known: bool = True) -> HookSummary:
    """A live hook as ``list_hooks`` shows it (``known=False``: its buffer is not counted here)."""
    created = from_timestamp(entry.created_at)
    assert created is not None
    return HookSummary(
        token=entry.token,
        hook_id=entry.hook_id,
        run_id=entry.run_id,
        kind="webhook" if entry.webhook is not None else "hook",
        created_at=created,
        received=entry.received,
        buffered=entry.untaken if known and entry.remote is None else None,
    )


#: What a timeline shows in place of a secret the run keeps in its events.
HIDDEN = "hidden"


def event_record(seq: int, record: bytes, position: int, payloads: Payloads) -> EventRecord:
    """One stored event for a timeline, its user values decrypted where a key allows."""
    event = payloads.decode_plain(record, position)
    return EventRecord(
        seq=seq,
        event_id=event.event_id,
        run_id=event.run_id,
        type=event.type,
        correlation_id=event.correlation_id,
        created_at=from_timestamp(event.created_at),  # type: ignore[arg-type]
        data=readable_data(event, payloads),
    )


def readable_data(event: Event, payloads: Payloads) -> dict[str, Any]:
    """``event.data`` with each user value decrypted, or ``"encrypted"`` without its key."""
    data = dict(event.data)
    # run_created's seed derives every webhook token the run will ever hand out (ids.py): a
    # timeline reader sees the tokens already handed out, never the ones to come.
    if "token_seed" in data:
        data["token_seed"] = HIDDEN
    for name in USER_VALUE_KEYS.intersection(data):
        try:
            data[name] = payloads.value(event, data[name])
        except DecryptionError:
            data[name] = ENCRYPTED
    return data
