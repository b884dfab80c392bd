"""The workflow ``postgres_processes`` serves with ``actorflow serve``, in its own small module.

``actorflow serve benchmarks.cluster_workflows:workflows --app-dir <repository root>`` imports
only this module (and the empty ``benchmarks/__init__.py``), so the served processes load
nothing of the harness.
"""

from __future__ import annotations

from typing import Any

import actorflow as af

__all__ = ["hook_loop", "workflows"]


@af.workflow(name="bench_cluster_hook_loop")
async def hook_loop(token: str) -> list[Any]:
    """Take payloads ``{"i": id}`` on the hook ``token`` until one says ``{"last": true}``;
    return the ids, in the order the run's history holds them (the harness checks them against
    its acknowledgements: each acknowledged id exactly once)."""
    hook = af.create_hook(token=token)
    received: list[Any] = []
    async for payload in hook:
        if _is_last(payload):
            break
        received.append(payload.get("i") if isinstance(payload, dict) else payload)
    return received


def _is_last(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("last") is True


workflows = [hook_loop]
