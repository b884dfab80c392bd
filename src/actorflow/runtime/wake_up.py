"""``run.wake_up()``: fire a run's pending sleeps now (for tests and operators).

Each sleep fired is an ordinary ``wait_completed`` event of its wait, recorded like the timer
would have recorded it (with ``"woken": true`` in its data), so a replay sees the same history
and the timer service skips the timer when its deadline comes (the state no longer lists it).
Hook timeouts (``hook.wait(timeout=...)``) are not sleeps and are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable

from .core import events as ev
from .journal import Journal
from .state import RunState, State

__all__ = ["pending_sleeps", "wake_up"]


def pending_sleeps(state: State, run: RunState, only: Iterable[str] | None) -> list[str]:
    """Ids of the run's pending sleeps, in the order they were made (``only``: just these)."""
    wanted = None if only is None else set(only)
    timers = state.timers
    out = []
    for pending_id in run.pending or ():
        timer = timers.get(pending_id)
        if timer is None or timer.purpose != "sleep" or timer.run_id != run.run_id:
            continue
        if wanted is None or pending_id in wanted:
            out.append(pending_id)
    return out


async def wake_up(
    journal: Journal, state: State, run: RunState, only: Iterable[str] | None
) -> list[str]:
    """Record ``wait_completed`` for the run's pending sleeps; return once durable, their ids.

    Raises:
        LogWriteError: the log failed.
    """
    fired = pending_sleeps(state, run, only)
    if not fired:
        return []
    journal.check()
    ticket = None
    for wait_id in fired:
        ticket = journal.record(journal.event(run.run_id, ev.WAIT_COMPLETED, wait_id,
                                              {"woken": True}))  # fmt: skip
    assert ticket is not None
    await ticket.wait()
    return fired
