"""User values as trees: the value half of the one codec (``codec`` adds exceptions).

A value becomes a JSON-compatible *tree* (dicts with str keys, lists, str, int, float, bool,
None) that the runtime embeds in its event records, and back. Plain JSON maps to itself. Anything
else becomes a one-key dict whose key starts with ``$``; user dicts with such keys are escaped, so
user data is never mistaken for a tag::

    $int        hex text               int beyond 64 bits (hex: no int/str digit limit)
    $float      "nan" | "inf" | "-inf"
    $bytes      base64                 also $bytearray
    $tuple      [items]                also $set, $frozenset (items sorted by canonical bytes)
    $dict       [[key, value], ...]    dict with a non-str key or a key starting with "$"
    $dt         iso | [iso, zone, fold]  datetime; the list when in a ZoneInfo zone or fold=1
    $time       iso | [iso, fold]      $date iso; $td [days, seconds, microseconds]
    $uuid       text                   $dec text (Decimal)
    $enum       [path, value]          $nt [path, [items]] (NamedTuple)
    $dc         [path, {field: value}] dataclass, init fields, rebuilt with cls(**fields)
    $model      [path, model_dump()]   any class with model_dump / model_validate (pydantic)
    $cls        [path, data]           classes with __actorflow_encode__ / __actorflow_decode__
    $reg        [name, data]           classes given to :func:`register`
    $enc        reserved for encrypted envelopes (crypto.py): never produced, rejected here

``path`` is ``module:qualname``; the class must be found there again, which is checked when a
value is encoded so that a run never writes what it cannot read back.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import json
import sys
import uuid
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, Final, TypeAlias, TypeVar
from zoneinfo import ZoneInfo

import orjson

from actorflow.errors import SerializationError, WorkflowDefinitionError
from actorflow.runtime.import_path import import_path

__all__ = [
    "MAX_DEPTH",
    "JSONValue",
    "digest",
    "dumps",
    "from_tree",
    "loads",
    "register",
    "to_tree",
]

JSONValue: TypeAlias = "dict[str, JSONValue] | list[JSONValue] | str | int | float | bool | None"

#: Deepest container nesting of a tree (tags count). orjson refuses 255 levels; the rest is left
#: for the records and envelopes that wrap a tree.
MAX_DEPTH: Final = 200

_T = TypeVar("_T")
_I64_MIN: Final = -(2**63)
_U64_MAX: Final = 2**64 - 1
_Handler: TypeAlias = Callable[[Any, int], Any]


class _Failure(Exception):
    """Internal: unwinds from the failing value, collecting the path one container at a time."""

    def __init__(self, reason: str, at: object, cause: BaseException | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.at = at  # the object whose container has not yet added its segment
        self.cause = cause
        self.segments: list[str] = []

    def locate(self, segment: str, container: object) -> None:
        self.segments.append(segment)
        self.at = container

    def path(self, root: str) -> str:
        text = root + "".join(reversed(self.segments))
        return text if len(text) <= 300 else f"{text[:100]}...{text[-180:]}"


def to_tree(value: object, root: str = "value") -> JSONValue:
    """Return the tree of ``value``; ``root`` names it in errors (``payload["items"][3].when``).

    Raises:
        SerializationError: a part of ``value`` cannot be encoded (the message names its path).
    """
    try:
        return _enc(value, 0)  # type: ignore[no-any-return]
    except _Failure as f:
        raise SerializationError(f"cannot encode {f.path(root)}: {f.reason}") from f.cause
    except RecursionError as exc:
        raise SerializationError(f"cannot encode {root}: it is nested too deeply") from exc


def from_tree(tree: JSONValue) -> Any:
    """Return the value a tree made by :func:`to_tree` stands for.

    Raises:
        SerializationError: the tree is malformed, holds an undecrypted envelope, or names a class
            that cannot be imported or rebuilt (the message names where).
    """
    try:
        return _dec(tree)
    except _Failure as f:
        raise SerializationError(f"cannot decode {f.path('value')}: {f.reason}") from f.cause
    except RecursionError as exc:
        raise SerializationError("cannot decode a tree nested this deeply") from exc


def dumps(value: object) -> bytes:
    """Return ``value`` as JSON bytes (orjson of its tree).

    Raises:
        SerializationError: ``value`` cannot be encoded.
    """
    try:
        return orjson.dumps(to_tree(value))
    except orjson.JSONEncodeError as exc:
        raise SerializationError(f"cannot encode value as JSON: {exc}") from exc


def loads(data: bytes) -> Any:
    """Return the value of JSON bytes written by :func:`dumps`.

    Raises:
        SerializationError: ``data`` is not JSON, or not a valid tree.
    """
    try:
        tree = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"cannot decode JSON: {exc}") from exc
    return from_tree(tree)


_DIGEST_OPTIONS: Final = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def digest(tree: JSONValue) -> str:
    """Return a short stable hash of a tree (32 hex digits); equal dicts hash equal in any order.

    Raises:
        SerializationError: ``tree`` is not a tree (pass it through :func:`to_tree` first).
    """
    try:
        data = orjson.dumps(tree, option=_DIGEST_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise SerializationError(f"cannot digest something that is not a tree: {exc}") from exc
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def register(
    cls: type[_T],
    *,
    name: str,
    encode: Callable[[_T], object],
    decode: Callable[[Any], _T],
) -> None:
    """Let instances of exactly ``cls`` be encoded as ``encode(obj)`` and rebuilt by ``decode``.

    ``name`` is written to the log, so keep it stable; registering a class again under a new name
    keeps the old name readable. ``encode`` may return any encodable value.

    Raises:
        WorkflowDefinitionError: ``name`` is empty or taken by another class, or ``cls`` is a
            type the codec handles itself.
    """
    if not isinstance(cls, type) or cls in _BUILTIN or cls in _SCALARS or cls in (dict, list):
        raise WorkflowDefinitionError(f"{cls!r} cannot be registered: the codec handles it")
    if not isinstance(name, str) or not name:
        raise WorkflowDefinitionError("register() needs a non-empty str name")
    held = _registered_names.get(name)
    if held is not None and _qualified(held[0]) != _qualified(cls):
        raise WorkflowDefinitionError(
            f"codec name {name!r} is already registered for {_qualified(held[0])}; choose "
            "another name"
        )
    _registered_names[name] = (cls, decode)
    _registered_types[cls] = (name, encode)
    _handlers.pop(cls, None)


# --- encoding ----------------------------------------------------------------------------------


def _enc(v: Any, d: int) -> Any:
    # Plain JSON first, by exact type: this runs once per value on every resume.
    t = type(v)
    if t is str:
        return v if v.isascii() else _check_text(v)
    if t is int:
        return v if _I64_MIN <= v <= _U64_MAX else {"$int": hex(v)}
    if t is float:
        return v if v - v == 0.0 else {"$float": repr(v)}  # v - v is nan for nan and inf
    if t is dict:
        if d >= MAX_DEPTH:
            raise _too_deep(v)
        for k in v:
            if type(k) is not str or k[:1] == "$":
                return _enc_pairs(v, d)
            if not k.isascii():
                _check_text(k, v)
        d += 1
        try:
            return {k: x if type(x) is str and x.isascii() else _enc(x, d) for k, x in v.items()}
        except _Failure as f:
            f.locate(_key_of(v, f.at), v)
            raise
    if t is list:
        if d >= MAX_DEPTH:
            raise _too_deep(v)
        d += 1
        try:
            return [x if type(x) is str and x.isascii() else _enc(x, d) for x in v]
        except _Failure as f:
            f.locate(_index_of(v, f.at), v)
            raise
    if v is None or t is bool:
        return v
    handler = _handlers.get(t)
    if handler is None:
        handler = _handlers[t] = _pick(t)
    return handler(v, d)


def _check_text(s: str, at: object = None) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Failure(
            "text with a lone surrogate is not valid unicode; decode bytes with errors='replace'",
            s if at is None else at,
            exc,
        ) from None
    return s


def _too_deep(v: object) -> _Failure:
    return _Failure(f"nested deeper than {MAX_DEPTH} levels (does it contain itself?)", v)


def _seg(key: object) -> str:
    if type(key) is str:
        text = json.dumps(key, ensure_ascii=False)
        return "[" + text.encode("utf-8", "backslashreplace").decode("utf-8") + "]"
    return f"[{_short(key)}]"


def _short(v: object, limit: int = 60) -> str:
    try:
        text = repr(v)
    except Exception:
        text = f"<{type(v).__qualname__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key_of(mapping: dict[Any, Any], child: object) -> str:
    for k, x in mapping.items():
        if x is child:
            return _seg(k)
    return "[?]"


def _index_of(seq: Iterable[object], child: object) -> str:
    for i, x in enumerate(seq):
        if x is child:
            return f"[{i}]"
    return "[?]"


def _enc_seq(seq: Iterable[object], d: int) -> list[Any]:
    """Encode the items of ``seq`` as children at depth ``d``."""
    if d > MAX_DEPTH:
        raise _too_deep(seq)
    try:
        return [_enc(x, d) for x in seq]
    except _Failure as f:
        f.locate(_index_of(seq, f.at), seq)
        raise


def _enc_pairs(v: dict[Any, Any], d: int) -> Any:
    if d + 3 > MAX_DEPTH:
        raise _too_deep(v)
    pairs = []
    for k, x in v.items():
        try:
            ek = _enc(k, d + 3)
        except _Failure as f:
            f.locate(f"[key {_short(k)}]", v)
            raise
        try:
            pairs.append([ek, _enc(x, d + 3)])
        except _Failure as f:
            f.locate(_seg(k), v)
            raise
    return {"$dict": pairs}


def _enc_set(tag: str) -> _Handler:
    def encode(v: Any, d: int) -> Any:
        if d + 2 > MAX_DEPTH:
            raise _too_deep(v)
        items = []
        for x in v:
            try:
                items.append(_enc(x, d + 2))
            except _Failure as f:
                f.locate("{" + _short(x) + "}", v)
                raise
        # Sets iterate in hash order, which changes between processes for str; sort them so that
        # digests (replay compares them) do not depend on the process.
        items.sort(key=lambda item: orjson.dumps(item, option=orjson.OPT_SORT_KEYS))
        return {tag: items}

    return encode


def _enc_datetime(v: datetime, d: int) -> Any:
    tz = v.tzinfo
    if isinstance(tz, ZoneInfo) and tz.key:
        # Keep the zone, and the wall time and fold as given: a time in a DST gap is valid here.
        return {"$dt": [v.isoformat(), tz.key, v.fold]}
    return {"$dt": [v.isoformat(), None, 1] if v.fold else v.isoformat()}


def _enc_time(v: time, d: int) -> Any:
    if v.tzinfo is not None and not isinstance(v.tzinfo, timezone):
        raise _Failure("a time with a zone that is not a fixed offset has no offset to keep", v)
    return {"$time": [v.isoformat(), 1] if v.fold else v.isoformat()}


def _b64(data: bytes | bytearray) -> str:
    return base64.b64encode(data).decode("ascii")


_BUILTIN: dict[type, _Handler] = {
    tuple: lambda v, d: {"$tuple": _enc_seq(v, d + 2)},
    set: _enc_set("$set"),
    frozenset: _enc_set("$frozenset"),
    bytes: lambda v, d: {"$bytes": _b64(v)},
    bytearray: lambda v, d: {"$bytearray": _b64(v)},
    datetime: _enc_datetime,
    date: lambda v, d: {"$date": v.isoformat()},
    time: _enc_time,
    timedelta: lambda v, d: {"$td": [v.days, v.seconds, v.microseconds]},
    uuid.UUID: lambda v, d: {"$uuid": str(v)},
    Decimal: lambda v, d: {"$dec": str(v)},
}
_handlers: dict[type, _Handler] = dict(_BUILTIN)
_registered_types: dict[type, tuple[str, Callable[[Any], object]]] = {}
_registered_names: dict[str, tuple[type, Callable[[Any], Any]]] = {}


def _qualified(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _importable(cls: type) -> bool:
    obj: object = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is cls


def _call(fn: Callable[[], object], what: str, v: object) -> object:
    try:
        return fn()
    except Exception as exc:
        raise _Failure(f"{what} raised {type(exc).__name__}: {exc}", v, exc) from None


def _tagged(tag: str, label: str, data: Callable[[Any], object]) -> _Handler:
    """A handler writing ``{tag: [label, tree of data(v)]}``."""

    def encode(v: Any, d: int) -> Any:
        raw = _call(lambda: data(v), label, v)
        try:
            return {tag: [label, _enc(raw, d + 2)]}
        except _Failure as f:
            f.locate("", v)
            raise

    return encode


def _enc_dataclass(path: str, names: tuple[str, ...]) -> _Handler:
    def encode(v: Any, d: int) -> Any:
        if d + 3 > MAX_DEPTH:
            raise _too_deep(v)
        fields = {}
        for name in names:
            try:
                fields[name] = _enc(getattr(v, name), d + 3)
            except _Failure as f:
                f.locate("." + name, v)
                raise
        return {"$dc": [path, fields]}

    return encode


def _unsupported(reason: str) -> _Handler:
    def encode(v: Any, d: int) -> Any:
        raise _Failure(reason, v)

    return encode


def _pick(t: type) -> _Handler:
    """Choose (once per type) how instances of ``t`` are encoded."""
    path = _qualified(t)
    if t in _registered_types:
        name, encode = _registered_types[t]
        return _tagged("$reg", name, encode)
    opted_in = hasattr(t, "__actorflow_encode__")
    known = opted_in or issubclass(t, enum.Enum) or dataclasses.is_dataclass(t)
    known = known or (issubclass(t, tuple) and hasattr(t, "_fields"))
    known = known or (hasattr(t, "model_dump") and hasattr(t, "model_validate"))
    if not known:
        base = next((b for b in _PLAIN_BASES if issubclass(t, b)), None)
        hint = f"convert it to a plain {base.__name__}, " if base else "make it a dataclass, "
        return _unsupported(
            f"object of type {path} is not supported; {hint}register it with "
            "actorflow.codec.register(...), or give it __actorflow_encode__ and "
            "__actorflow_decode__ methods"
        )
    if not _importable(t):
        return _unsupported(
            f"class {path} cannot be found again by that import path (is it defined inside a "
            "function?); define it at module level, or register it with "
            "actorflow.codec.register(...)"
        )
    if opted_in:
        if not hasattr(t, "__actorflow_decode__"):
            return _unsupported(
                f"class {path} has __actorflow_encode__ but no __actorflow_decode__"
            )
        return _tagged("$cls", path, lambda v: v.__actorflow_encode__())
    if issubclass(t, enum.Enum):
        return _tagged("$enum", path, lambda v: v.value)
    if issubclass(t, tuple):
        return lambda v, d: {"$nt": [path, _enc_seq(v, d + 3)]}
    if dataclasses.is_dataclass(t):
        return _enc_dataclass(path, tuple(f.name for f in dataclasses.fields(t) if f.init))
    return _tagged("$model", path, lambda v: v.model_dump())


_PLAIN_BASES: Final = (dict, list, tuple, set, frozenset, str, bytes, int, float, datetime, date)


# --- decoding ----------------------------------------------------------------------------------


def _dec(t: Any) -> Any:
    # Scalars are tested inline in the comprehensions: a call per scalar is most of the cost.
    tt = type(t)
    if tt is dict:
        if len(t) == 1:
            for k in t:
                if type(k) is str and k[:1] == "$":
                    return _dec_tag(k, t[k], t)
        try:
            return {k: x if type(x) in _SCALARS else _dec(x) for k, x in t.items()}
        except _Failure as f:
            f.locate(_key_of(t, f.at), t)
            raise
    if tt is list:
        return _dec_list(t)
    if tt in _SCALARS:
        return t
    raise _Failure(f"malformed tree: {tt.__qualname__} is not a JSON value", t)


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _dec_list(t: Any) -> list[Any]:
    if type(t) is not list:
        raise _Failure(f"expected a list, found {_short(t)}", t)
    try:
        return [x if type(x) in _SCALARS else _dec(x) for x in t]
    except _Failure as f:
        f.locate(_index_of(t, f.at), t)
        raise


def _dec_tag(tag: str, data: Any, node: object) -> Any:
    decode = _DECODERS.get(tag)
    if decode is None:
        if tag == "$enc":
            raise _Failure(
                "encrypted value reached the codec undecrypted; decrypt envelopes first", node
            )
        raise _Failure(f"unknown tag {tag!r} (written by a newer actorflow?)", node)
    try:
        return decode(data)
    except _Failure as f:
        if not f.segments and f.at is data:
            f.reason = f"malformed {tag} value: {f.reason}"
        f.at = node  # the tag's container names the tag; the parts inside add no segment
        raise
    except Exception as exc:
        raise _Failure(f"malformed {tag} value {_short(data)}: {exc}", node, exc) from None


def _text(data: Any) -> str:
    if type(data) is not str:
        raise _Failure(f"expected text, found {_short(data)}", data)
    return data


def _pair(data: Any) -> tuple[str, Any]:
    if type(data) is not list or len(data) != 2 or type(data[0]) is not str:
        raise _Failure(f"expected [name, value], found {_short(data)}", data)
    return data[0], data[1]


def _dec_pairs(data: Any) -> dict[Any, Any]:
    out = {}
    for pair in _dec_list(data):
        if type(pair) is not list or len(pair) != 2:
            raise _Failure(f"expected a [key, value] pair, found {_short(pair)}", data)
        out[pair[0]] = pair[1]
    return out


def _dec_datetime(data: Any) -> datetime:
    if type(data) is list:
        iso, zone, fold = data
        wall = datetime.fromisoformat(_text(iso))
        return (
            wall.replace(fold=fold)
            if zone is None
            else wall.replace(tzinfo=ZoneInfo(zone), fold=fold)
        )
    return datetime.fromisoformat(_text(data))


def _dec_time(data: Any) -> time:
    if type(data) is list:
        iso, fold = data
        return time.fromisoformat(_text(iso)).replace(fold=fold)
    return time.fromisoformat(_text(data))


def _dec_float(data: Any) -> float:
    if data not in ("nan", "inf", "-inf"):
        raise _Failure(f"expected nan, inf or -inf, found {_short(data)}", data)
    return float(data)


def _dec_td(data: Any) -> timedelta:
    if type(data) is not list or len(data) != 3 or any(type(x) is not int for x in data):
        raise _Failure(f"expected [days, seconds, microseconds], found {_short(data)}", data)
    return timedelta(days=data[0], seconds=data[1], microseconds=data[2])


def _import_class(path: str, kind: str, check: Callable[[type], bool]) -> Any:
    cls = _classes.get(path)
    if cls is None:
        try:
            obj = import_path(path)
        except Exception as exc:
            raise _Failure(
                f"{kind} {path} named in the log cannot be imported ({exc}); keep a class "
                "importable under that path for runs that recorded it",
                path,
                exc,
            ) from None
        if not isinstance(obj, type):
            raise _Failure(f"{path} is not a class", path)
        _classes[path] = cls = obj
    if not check(cls):
        raise _Failure(f"{path} is not a {kind}", path)
    return cls


_classes: dict[str, type] = {}


def _user_class(
    kind: str, check: Callable[[type], bool], build: Callable[[Any, Any], Any]
) -> Callable[[Any], Any]:
    """A decoder for ``[path, data]``: import the class, decode the data, ``build(cls, data)``."""

    def decode(data: Any) -> Any:
        path, raw = _pair(data)
        cls = _import_class(path, kind, check)
        value = _dec(raw)
        try:
            return build(cls, value)
        except Exception as exc:
            raise _Failure(f"{path} rejected {_short(value)}: {exc}", data, exc) from None

    return decode


def _dec_registered(data: Any) -> Any:
    name, raw = _pair(data)
    entry = _registered_names.get(name)
    if entry is None:
        raise _Failure(
            f"no class is registered under {name!r}; call actorflow.codec.register(...) for "
            "it before reading this run",
            data,
        )
    value = _dec(raw)
    try:
        return entry[1](value)
    except Exception as exc:
        raise _Failure(f"the decoder registered as {name!r} raised {exc!r}", data, exc) from None


def _dec_dataclass(cls: Any, fields: Any) -> Any:
    if type(fields) is not dict:
        raise TypeError("fields must be a dict")
    return cls(**fields)


def _is_model(cls: type) -> bool:
    return hasattr(cls, "model_validate")


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "$int": lambda data: int(_text(data), 16),
    "$float": _dec_float,
    "$bytes": lambda data: base64.b64decode(_text(data), validate=True),
    "$bytearray": lambda data: bytearray(base64.b64decode(_text(data), validate=True)),
    "$tuple": lambda data: tuple(_dec_list(data)),
    "$set": lambda data: set(_dec_list(data)),
    "$frozenset": lambda data: frozenset(_dec_list(data)),
    "$dict": _dec_pairs,
    "$dt": _dec_datetime,
    "$date": lambda data: date.fromisoformat(_text(data)),
    "$time": _dec_time,
    "$td": _dec_td,
    "$uuid": lambda data: uuid.UUID(_text(data)),
    "$dec": lambda data: Decimal(_text(data)),
    "$enum": _user_class("enum", lambda c: issubclass(c, enum.Enum), lambda c, v: c(v)),
    "$nt": _user_class(
        "named tuple",
        lambda c: issubclass(c, tuple) and hasattr(c, "_fields"),
        lambda c, v: c(*v),
    ),
    "$dc": _user_class("dataclass", dataclasses.is_dataclass, _dec_dataclass),
    "$model": _user_class("model class", _is_model, lambda c, v: c.model_validate(v)),
    "$cls": _user_class(
        "class with __actorflow_decode__",
        lambda c: hasattr(c, "__actorflow_decode__"),
        lambda c, v: c.__actorflow_decode__(v),
    ),
    "$reg": _dec_registered,
}
