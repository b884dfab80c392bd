"""Exceptions as data: what a failed step leaves in the log, and what the workflow gets back.

An exception is stored as the tree ``{"type": "module:qualname", "message": str, "args": tree |
None, "attrs": {name: tree}, "traceback": str}`` and never pickled: ``args`` is ``None`` when the
arguments cannot be encoded, ``attrs`` keeps the encodable entries of the instance ``__dict__``,
``traceback`` is the text of :func:`traceback.format_exception`. An exception group also has
``"group"``: the error trees of its sub-exceptions.

Decoding re-creates the same class when it can be imported, is an ``Exception`` and accepts
``cls(*args)``; its args and attributes are then restored as recorded. Anything else becomes a
:class:`StepError`. Classes deriving only from ``BaseException`` (``KeyboardInterrupt``,
cancellation) are never re-created: raising one inside a workflow would pass for a real interrupt or
cancellation of the runtime. Either way the exception keeps the recorded traceback text in
``__actorflow_traceback__``.

"""

from __future__ import annotations

import traceback
from typing import Any

from actorflow.errors import SerializationError, WorkflowError
from actorflow.runtime.import_path import import_path
from actorflow.runtime.values import JSONValue, from_tree, to_tree

__all__ = ["StepError", "error_from_tree", "error_to_tree"]

_TRACEBACK_ATTR = "__actorflow_traceback__"


class StepError(WorkflowError):
    """A step's exception whose class could not be re-created in the workflow.

    ``type_name`` is the original class as ``module:qualname``, ``message`` its text and
    ``remote_traceback`` the traceback text recorded where it was raised.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.__actorflow_traceback__ = remote_traceback


def error_to_tree(exc: BaseException) -> JSONValue:
    """Return the tree of ``exc``: class path, message, args, attributes and traceback text.

    Never raises: args or attributes that cannot be encoded are left out.
    """
    text = _format(exc)
    earlier = getattr(exc, _TRACEBACK_ATTR, None)
    if isinstance(earlier, str) and earlier:
        # A step's exception re-raised by the workflow: keep where the step failed, too.
        text = f"{earlier}\nRe-raised in the workflow:\n\n{text}"
    if isinstance(exc, StepError):
        return {
            "type": exc.type_name,
            "message": exc.message,
            "args": None,
            "attrs": {},
            "traceback": text,
        }
    args: Any
    group: list[Any] | None = None
    raw_args = list(exc.args)
    if isinstance(exc, BaseExceptionGroup):
        # The sub-exceptions are stored as error trees of their own, not as args.
        raw_args = [exc.message]
        group = [error_to_tree(sub) for sub in exc.exceptions]
    try:
        args = to_tree(raw_args, "args")
    except Exception:
        args = None
    state = dict(getattr(exc, "__dict__", {}))
    if isinstance(exc, OSError):  # slots, not in __dict__ nor in args
        state.update(
            (name, getattr(exc, name)) for name in _OSERROR_SLOTS if getattr(exc, name) is not None
        )
    attrs: dict[str, Any] = {}
    for key, value in state.items():
        if type(key) is not str or key == _TRACEBACK_ATTR or key.startswith("$"):
            continue
        try:
            attrs[key] = to_tree(value, key)
        except Exception:
            continue
    cls = type(exc)
    tree: dict[str, Any] = {
        "type": f"{cls.__module__}:{cls.__qualname__}",
        "message": _message(exc),
        "args": args,
        "attrs": attrs,
        "traceback": text,
    }
    if group is not None:
        tree["group"] = group
    return tree


_OSERROR_SLOTS = ("filename", "filename2")


def error_from_tree(tree: JSONValue) -> BaseException:
    """Return the exception a tree made by :func:`error_to_tree` stands for.

    The same class when it can be imported and built from its args, else a :class:`StepError`;
    either way the recorded traceback text is in ``__actorflow_traceback__``.

    Raises:
        SerializationError: ``tree`` is not an error tree.
    """
    if (
        not isinstance(tree, dict)
        or not isinstance(tree.get("type"), str)
        or not isinstance(tree.get("message"), str)
        or not isinstance(tree.get("traceback", ""), str)
    ):
        raise SerializationError(f"malformed error record: {tree!r:.200}")
    type_name: str = tree["type"]  # type: ignore[assignment]
    message: str = tree["message"]  # type: ignore[assignment]
    text: str = tree.get("traceback", "")  # type: ignore[assignment]
    exc = _recreate(type_name, tree.get("args"), tree.get("attrs"), tree.get("group"))
    if exc is None:
        return StepError(type_name, message, text)
    try:
        setattr(exc, _TRACEBACK_ATTR, text)
    except Exception:
        return StepError(type_name, message, text)
    return exc


def _recreate(type_name: str, args_tree: Any, attrs_tree: Any, group: Any) -> BaseException | None:
    cls = _exception_class(type_name)
    if cls is None or args_tree is None:
        return None
    try:
        args = from_tree(args_tree)
        if type(args) is not list:
            return None
        if isinstance(group, list):
            args.append([error_from_tree(sub) for sub in group])
    except Exception:
        return None
    exc: BaseException | None
    try:
        exc = cls(*args)
    except Exception:
        exc = _bare(cls, args, group)
    if exc is None or not isinstance(exc, cls):
        return None
    if group is None:
        try:
            # __init__ may have reformatted them (a message built from a token, say).
            exc.args = tuple(args)
        except Exception:
            pass
    for key, value in (attrs_tree if isinstance(attrs_tree, dict) else {}).items():
        try:
            setattr(exc, key, from_tree(value))
        except Exception:
            continue
    return exc


def _bare(cls: type[Exception], args: list[Any], group: Any) -> BaseException | None:
    """Our own errors take fields, not a message; rebuild them without calling ``__init__``.

    Their args and attributes are restored right after, so the caller gets the same class with
    the same message and fields (``HookConflictError.token``, ``ReplayDivergenceError.position``).
    """
    from actorflow.errors import WorkflowError

    if group is not None or not issubclass(cls, WorkflowError):
        return None
    exc = cls.__new__(cls)
    exc.args = tuple(args)
    return exc


def _exception_class(type_name: str) -> type[Exception] | None:
    try:
        obj = import_path(type_name)
    except Exception:
        return None
    if isinstance(obj, type) and issubclass(obj, Exception) and obj is not StepError:
        return obj
    return None


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__qualname__}>"


def _format(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:
        return f"{type(exc).__qualname__}: {_message(exc)} (traceback unavailable)\n"
