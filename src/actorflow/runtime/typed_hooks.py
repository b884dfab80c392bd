"""Typed hooks: ``af.define_hook(schema)``.

The schema is recorded with the hook (as an import path), so every way in (``resume_hook``, the
HTTP resume route, ``.resume``) validates and converts the payload before anything is written.
A schema is a dataclass, a ``TypedDict``, or any class with ``model_validate`` (pydantic).
Validation collects every problem, each with its path, into one ``HookPayloadError``.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import (
    Any,
    Generic,
    Literal,
    NotRequired,
    Required,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from ..errors import HookPayloadError, WorkflowDefinitionError
from .core.ops import HookHandle
from .current import OutsideApi, current
from .import_path import import_path, importable, qualified_name

__all__ = ["TypedHook", "define_hook", "load_schema", "schema_path", "validate_payload"]

T = TypeVar("T")


def schema_path(schema: type[Any]) -> str:
    """``module:qualname`` of a schema class, checked to be importable.

    Raises:
        WorkflowDefinitionError: the class cannot be found again by that path.
    """
    if not importable(schema):
        raise WorkflowDefinitionError(
            f"hook schema {schema!r} must be defined at module level so it can be found again "
            "after a restart"
        )
    return qualified_name(schema)


def load_schema(path: str) -> type[Any]:
    """The schema class recorded as ``path``.

    Raises:
        WorkflowDefinitionError: it cannot be imported.
    """
    try:
        obj = import_path(path)
    except ImportError as exc:
        raise WorkflowDefinitionError(f"hook schema {path!r} cannot be imported: {exc}") from exc
    if not isinstance(obj, type):
        raise WorkflowDefinitionError(f"hook schema {path!r} is not a class")
    return obj


def validate_payload(schema: type[T], payload: Any, token: str) -> T:
    """``payload`` validated against ``schema`` and converted to it.

    Raises:
        HookPayloadError: every problem found, each with its path.
    """
    validate = getattr(schema, "model_validate", None)
    if callable(validate):
        if isinstance(payload, schema):
            return payload
        try:
            return validate(payload)  # type: ignore[no-any-return]
        except Exception as exc:
            errors = getattr(exc, "errors", None)
            found: list[str] = []
            if callable(errors):
                try:
                    for err in errors():
                        where = ".".join(str(p) for p in err.get("loc", ())) or "payload"
                        found.append(f"{where}: {err.get('msg', err)}")
                except Exception:
                    found = []
            raise HookPayloadError(token, found or [str(exc)]) from exc
    problems: list[str] = []
    value = _convert(schema, payload, "payload", problems)
    if problems:
        raise HookPayloadError(token, problems)
    return value  # type: ignore[no-any-return]


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__required_keys__")


def _convert(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    if tp is Any or tp is object:
        return value
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        for option in get_args(tp):
            trial: list[str] = []
            converted = _convert(option, value, path, trial)
            if not trial:
                return converted
        problems.append(f"{path}: {value!r} matches none of {_name(tp)}")
        return value
    if origin is Literal:
        if value not in get_args(tp):
            problems.append(f"{path}: must be one of {list(get_args(tp))!r}, not {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            problems.append(f"{path}: must be null, not {value!r}")
        return value
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
        container = origin or tp
        if not isinstance(value, list | tuple):
            problems.append(f"{path}: must be a list, not {type(value).__name__}")
            return value
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return container(items)
    if origin is dict or tp is dict or origin is Mapping:
        if not isinstance(value, dict):
            problems.append(f"{path}: must be an object, not {type(value).__name__}")
            return value
        args = get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {k: _convert(val_tp, v, f"{path}[{k!r}]", problems) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        return _fields(tp, value, path, problems, dataclass=True)
    if _is_typeddict(tp):
        return _fields(tp, value, path, problems, dataclass=False)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        problems.append(f"{path}: must be a number, not {type(value).__name__}")
        return value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{path}: must be an integer, not {type(value).__name__}")
        return value
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        problems.append(f"{path}: must be {tp.__name__}, not {type(value).__name__}")
        return value
    return value


def _fields(tp: type[Any], value: Any, path: str, problems: list[str], *, dataclass: bool) -> Any:
    if not isinstance(value, dict):
        problems.append(f"{path}: must be an object, not {type(value).__name__}")
        return value
    try:
        hints = get_type_hints(tp)
    except Exception:
        hints = {}
    if dataclass:
        fields = [f for f in dataclasses.fields(tp) if f.init]
        names = [f.name for f in fields]
        required = {
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
    else:
        names = list(hints)
        required = set(getattr(tp, "__required_keys__", ()))
        # Python 3.11 misreads NotRequired/Required under postponed annotations: ask the hints.
        try:
            extras = get_type_hints(tp, include_extras=True)
        except Exception:
            extras = {}
        for name, hint in extras.items():
            if get_origin(hint) is NotRequired:
                required.discard(name)
            elif get_origin(hint) is Required:
                required.add(name)
        hints = {name: _strip_required(hint) for name, hint in hints.items()}
    for key in value:
        if key not in names:
            problems.append(f"{path}.{key}: unknown field")
    for name in sorted(required - set(value)):
        problems.append(f"{path}.{name}: missing")
    converted = {
        name: _convert(hints.get(name, Any), value[name], f"{path}.{name}", problems)
        for name in names
        if name in value
    }
    if problems or not dataclass:
        return converted
    return tp(**converted)


def _strip_required(hint: Any) -> Any:
    if get_origin(hint) in (NotRequired, Required):
        return get_args(hint)[0]
    return hint


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


class TypedHook(Generic[T]):
    """A hook type with a payload schema: ``.create(...)`` in a workflow, ``.resume(...)`` outside."""

    def __init__(self, schema: type[T]) -> None:
        if not (
            callable(getattr(schema, "model_validate", None))
            or (dataclasses.is_dataclass(schema) and isinstance(schema, type))
            or _is_typeddict(schema)
        ):
            raise WorkflowDefinitionError(
                f"define_hook() takes a dataclass, a TypedDict or a class with model_validate "
                f"(pydantic), not {schema!r}"
            )
        self.schema = schema
        self.path = schema_path(schema)

    def create(self, token: str | None = None, metadata: Any = None) -> HookHandle[T]:
        """Create a hook of this type inside a workflow (see ``af.create_hook``)."""
        from .workflow import _machine

        return _machine("create").create_hook(token, metadata, schema=self.path)

    def validate(self, payload: Any, token: str = "?") -> T:
        """``payload`` converted to the schema.

        Raises:
            HookPayloadError: it does not fit the schema.
        """
        return validate_payload(self.schema, payload, token)

    async def resume(self, token: str, payload: Any, **options: Any) -> Any:
        """Validate and deliver ``payload`` (see ``resume_hook``); nothing written if invalid.

        Raises:
            HookPayloadError: the payload does not fit the schema.
            HookNotFoundError, SerializationError, OverloadedError, LogWriteError.
        """
        value = self.validate(payload, token)
        api: OutsideApi = current()
        return await api.resume_hook(token, value, **options)


def define_hook(schema: type[T]) -> TypedHook[T]:
    """A typed hook: payloads are validated against ``schema`` before anything is written.

    Raises:
        WorkflowDefinitionError: ``schema`` is not a dataclass, TypedDict or pydantic-style class.
    """
    return TypedHook(schema)
