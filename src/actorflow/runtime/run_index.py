"""Run ids sorted for listing: all of them, by status, by workflow; fed by ``State.apply``.

``list_runs`` reads a page from here instead of scanning the log or every run: it walks one
sorted list from the cursor down and stops after ``limit`` matches. The lists hold run ids,
which sort by creation time (``ids.py``), so "newest first, older than the cursor" is a range
of one list.

The index is built on the first listing, from the runs the fold already holds, and kept up to
date from then on: a runtime nobody lists pays nothing for it, not at recovery (a million
events fold as fast as before) nor in memory. Built, it costs about 1 us per status change and
three list slots per run.

The sorted lists are ``sortedcontainers.SortedList``: insertions and removals anywhere in
O(log n), which a status change needs (a run leaves ``running`` from the middle of the list).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from sortedcontainers import SortedList

__all__ = ["RunIndex"]


class RunState(Protocol):
    """What the index reads of a run (``state.RunState``, which imports this module)."""

    run_id: str
    status: str
    workflow_name: str


class RunIndex:
    """Run ids by status and by workflow, each list sorted (oldest first)."""

    __slots__ = ("_all", "_by_status", "_by_workflow", "built")

    def __init__(self) -> None:
        #: False until the first listing builds the lists; until then updates are no-ops.
        self.built = False
        self._all: SortedList[str] = SortedList()
        self._by_status: dict[str, SortedList[str]] = {}
        self._by_workflow: dict[str, SortedList[str]] = {}

    def build(self, runs: Iterable[RunState]) -> None:
        """Fill the lists from the runs the state holds (once; later calls do nothing)."""
        if self.built:
            return
        by_status: dict[str, list[str]] = {}
        by_workflow: dict[str, list[str]] = {}
        every: list[str] = []
        for run in runs:
            every.append(run.run_id)
            by_status.setdefault(run.status, []).append(run.run_id)
            by_workflow.setdefault(run.workflow_name, []).append(run.run_id)
        # Runs come in creation order, so each list is nearly sorted already.
        self._all = SortedList(every)
        self._by_status = {k: SortedList(v) for k, v in by_status.items()}
        self._by_workflow = {k: SortedList(v) for k, v in by_workflow.items()}
        self.built = True

    def added(self, run: RunState) -> None:
        """A run was created."""
        if not self.built:
            return
        run_id = run.run_id
        if run_id in self._all:
            self.drop(run_id)  # folded again (a run taken back over): start afresh
        self._all.add(run_id)
        self._list(self._by_status, run.status).add(run_id)
        self._list(self._by_workflow, run.workflow_name).add(run_id)

    def moved(self, run_id: str, old: str, new: str) -> None:
        """A run's status changed from ``old`` to ``new``."""
        if not self.built:
            return
        self._by_status[old].discard(run_id)
        self._list(self._by_status, new).add(run_id)

    def drop(self, run_id: str) -> None:
        """Forget a run (retention removed it); a no-op for a run the index does not hold."""
        if not self.built:
            return
        self._all.discard(run_id)
        for lists in (self._by_status, self._by_workflow):
            for ids in lists.values():
                ids.discard(run_id)

    def newest_first(
        self, status: str | None, workflow: str | None, before: str | None
    ) -> Iterator[str]:
        """Run ids, newest first, older than ``before`` if given, from the narrowest list that
        covers the filters (the caller checks a second filter on each run)."""
        candidates = [self._all]
        if status is not None:
            candidates.append(self._by_status.get(status) or SortedList())
        if workflow is not None:
            candidates.append(self._by_workflow.get(workflow) or SortedList())
        ids = min(candidates, key=len)
        if before is None:
            return reversed(ids)
        return ids.irange(maximum=before, inclusive=(True, False), reverse=True)

    @staticmethod
    def _list(lists: dict[str, SortedList[str]], key: str) -> SortedList[str]:
        found = lists.get(key)
        if found is None:
            found = lists[key] = SortedList()
        return found
