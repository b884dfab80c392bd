"""Webhook signature checks as data, so a webhook's ``verify=`` survives a restart.

The log records which check a webhook uses (a preset with its secret *name*, or the import path
of a user's function), never a secret; the runtime turns that back into a callable when a request
arrives. A check that cannot be found again after a restart (a lambda, a closure) is refused when
the webhook is created rather than silently dropped later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import WorkflowDefinitionError
from .import_path import import_path, importable, qualified_name

__all__ = ["attach_verifier", "load_verifier"]

Verifier = Callable[..., None]


def attach_verifier(options: dict[str, Any], verify: Verifier | None) -> None:
    """Describe ``verify`` in ``options["verify"]`` (nothing when ``None``).

    Raises:
        WorkflowDefinitionError: ``verify`` is neither a preset nor an importable function.
    """
    if verify is None:
        return
    from .. import verify as presets

    if isinstance(verify, presets._StandardWebhooks):
        spec: dict[str, Any] = {"preset": "standard_webhooks", "tolerance": verify.tolerance}
    elif isinstance(verify, presets._Stripe):
        spec = {"preset": "stripe", "tolerance": verify.tolerance}
    elif isinstance(verify, presets._GitHub):
        spec = {"preset": "github"}
    else:
        if not importable(verify):
            raise WorkflowDefinitionError(
                f"verify={verify!r} cannot be found again after a restart; pass an af.verify "
                "preset or a module-level function `(request, secrets) -> None`"
            )
        options["verify"] = {"callable": qualified_name(verify)}
        return
    spec["secret_name"] = verify.secret_name
    options["verify"] = spec


def load_verifier(spec: dict[str, Any]) -> Verifier:
    """The callable a recorded ``verify`` description stands for.

    Raises:
        WorkflowDefinitionError: the description names nothing that can be loaded.
    """
    from .. import verify as presets

    preset = spec.get("preset")
    if preset == "standard_webhooks":
        return presets.standard_webhooks(spec["secret_name"], tolerance=spec["tolerance"])
    if preset == "stripe":
        return presets.stripe(spec["secret_name"], tolerance=spec["tolerance"])
    if preset == "github":
        return presets.github(spec["secret_name"])
    path = spec.get("callable")
    if isinstance(path, str):
        try:
            found = import_path(path)
        except Exception as exc:
            raise WorkflowDefinitionError(
                f"the webhook's signature check {path!r} cannot be imported: {exc}"
            ) from exc
        if callable(found):
            return found
    raise WorkflowDefinitionError(f"unknown webhook signature check {spec!r}")
