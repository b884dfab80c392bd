"""Find a class or function again by ``module:qualname``: how the log names code it depends on
(payload classes, exception types, hook schemas, webhook signature checks)."""

from __future__ import annotations

import importlib

__all__ = ["import_path", "importable", "qualified_name"]


def qualified_name(obj: object) -> str:
    """``module:qualname`` of a class or function."""
    return f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"


def import_path(path: str) -> object:
    """The object named by ``module:qualname``.

    Raises:
        ImportError: the module cannot be imported, or has nothing by that name.
    """
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise ImportError(f"{path!r} is not of the form module:qualname")
    obj: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ImportError(f"{module_name} has no {qualname}") from exc
    return obj


def importable(obj: object) -> bool:
    """True when ``obj`` is found again under its own ``module:qualname``."""
    try:
        return import_path(qualified_name(obj)) is obj
    except Exception:
        return False
