"""The workflows a runtime can start and recover, by name."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import WorkflowDefinitionError
from .workflow import WorkflowFunction

__all__ = ["Registry"]


class Registry:
    """Workflow functions by name (a mapping that ``register`` fills)."""

    def __init__(self, workflows: Iterable[WorkflowFunction[..., Any]] = ()) -> None:
        self._by_name: dict[str, WorkflowFunction[..., Any]] = {}
        for wf in workflows:
            self.register(wf)

    def register(self, wf: WorkflowFunction[..., Any]) -> None:
        """Make a workflow startable (and recoverable).

        Raises:
            WorkflowDefinitionError: not a workflow, or another workflow has the same name.
        """
        if not isinstance(wf, WorkflowFunction):
            raise WorkflowDefinitionError(f"{wf!r} is not decorated with @af.workflow")
        other = self._by_name.get(wf.name)
        if other is not None and other is not wf:
            raise WorkflowDefinitionError(
                f"two workflows are named {wf.name!r}; give one @af.workflow(name=...)"
            )
        self._by_name[wf.name] = wf

    def get(self, name: str) -> WorkflowFunction[..., Any] | None:
        return self._by_name.get(name)

    def find(self, workflow: WorkflowFunction[..., Any] | str) -> WorkflowFunction[..., Any]:
        """The workflow to start: by name, or the function itself (registered on the way).

        Raises:
            WorkflowDefinitionError: no workflow has that name, or it is not a workflow.
        """
        if isinstance(workflow, str):
            found = self._by_name.get(workflow)
            if found is None:
                raise WorkflowDefinitionError(
                    f"no workflow named {workflow!r} is registered; known: "
                    f"{', '.join(sorted(self._by_name)) or 'none'}"
                )
            return found
        self.register(workflow)
        return workflow

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __getitem__(self, name: str) -> WorkflowFunction[..., Any]:
        return self._by_name[name]
