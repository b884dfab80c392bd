"""Parked runs: what the outside sees of a run whose code does not fit it, and who runs what.

A run is *parked* when a rebuild finds that the code no longer replays its history (a
divergence), or that its workflow is not registered. It is not ended: its hooks, buffered
payloads, timers and idempotency keys stay, and deliveries are still accepted up to the mailbox
bound. The ``run_parked`` event records why (plain descriptions, no user value), once per reason;
``run_unparked`` records that a later rebuild replayed the whole history again. A parked run is
retried at every start and by ``Runtime.retry_parked()``.

``Run.status()`` keeps the SPEC's five names (a parked run is ``pending`` or ``running``);
``Run.parked()`` says whether, and why, it is parked.

A runtime with a version (``Runtime(version=...)``) runs only the runs stamped with that same
version; an unversioned runtime runs every run. Runs of another version are not parked: they wait,
untouched, for a runtime of their version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import WorkflowDefinitionError

if TYPE_CHECKING:
    from .core.events import Event
    from .state import RunState, State

__all__ = [
    "Parking",
    "RetryReport",
    "check_divergence_mode",
    "log_missing_workflow",
    "parked_runs",
    "runs_here",
]

logger = logging.getLogger("actorflow.runtime")


@dataclass(frozen=True, slots=True)
class Parking:
    """Why a run is parked, from its ``run_parked`` event.

    ``reason`` is ``"divergence"`` (then ``position`` is the index of the durable call where
    code and history disagree, ``recorded`` what the history holds there and ``attempted`` what
    the code did instead) or ``"missing_workflow"``.
    """

    run_id: str
    reason: str
    message: str
    parked_at: datetime
    position: int | None = None
    recorded: str | None = None
    attempted: str | None = None

    @classmethod
    def of(cls, event: Event) -> Parking:
        data = event.data
        position = data.get("position")
        return cls(
            run_id=event.run_id,
            reason=str(data.get("reason")),
            message=str(data.get("message")),
            parked_at=datetime.fromtimestamp(event.created_at, UTC),
            position=None if position is None else int(position),
            recorded=_text(data.get("recorded")),
            attempted=_text(data.get("attempted")),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``parked_at`` as ISO 8601)."""
        return {
            "run_id": self.run_id,
            "reason": self.reason,
            "message": self.message,
            "parked_at": self.parked_at.isoformat(),
            "position": self.position,
            "recorded": self.recorded,
            "attempted": self.attempted,
        }


@dataclass(frozen=True, slots=True)
class RetryReport:
    """What ``retry_parked`` did: runs that go on again, and runs still parked."""

    resumed: list[str]
    parked: list[str]

    @classmethod
    def of(cls, retried: list[RunState], still: list[RunState]) -> RetryReport:
        again = {run.run_id for run in still}
        return cls(
            resumed=[run.run_id for run in retried if run.run_id not in again],
            parked=[run.run_id for run in retried if run.run_id in again],
        )

    def to_json(self) -> dict[str, Any]:
        return {"resumed": self.resumed, "parked": self.parked}


def check_divergence_mode(mode: str) -> str:
    """``mode`` if it is ``"park"`` or ``"fail"``.

    Raises:
        WorkflowDefinitionError: it is neither.
    """
    if mode not in ("park", "fail"):
        raise WorkflowDefinitionError(f'on_divergence must be "park" or "fail", not {mode!r}')
    return mode


def runs_here(version: str | None, run: RunState) -> bool:
    """True if a runtime of ``version`` runs ``run`` (``None``: any run)."""
    return version is None or run.version == version


def parked_runs(state: State, version: str | None) -> list[RunState]:
    """The runs this process holds parked (not those of another version)."""
    return [
        run
        for run in state.runs.values()
        if run.actor is not None
        and run.actor.parked
        and not run.finished
        and runs_here(version, run)
    ]


def log_missing_workflow(run: RunState) -> None:
    logger.error(
        "run %s uses workflow %r, which this runtime does not have; it waits until a "
        "runtime with that workflow registered starts (or Runtime.retry_parked() after "
        "registering it)",
        run.run_id, run.workflow_name,
    )  # fmt: skip


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
