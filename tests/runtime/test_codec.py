"""The codec: round trips that keep types, paths in errors, "$" escaping, exceptions as data."""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actorflow.errors import (
    FatalError,
    HookNotFoundError,
    RetryableError,
    SerializationError,
    WorkflowDefinitionError,
)
from actorflow.runtime import codec
from actorflow.runtime.codec import (
    StepError,
    digest,
    dumps,
    error_from_tree,
    error_to_tree,
    from_tree,
    loads,
    register,
    to_tree,
)

# --- module-level types: the codec finds them again by import path -----------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.Flag):
    R = 1
    W = 2


class Planet(enum.Enum):
    EARTH = (5.97e24, 6.37e6)


@dataclasses.dataclass
class Item:
    sku: str
    qty: int = 1
    tags: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True, slots=True)
class Order:
    order_id: uuid.UUID
    items: list[Item]
    when: datetime
    total: Decimal
    derived: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "derived", len(self.items))


class Pair(NamedTuple):
    left: int
    right: tuple[int, ...]


OldPair = collections.namedtuple("OldPair", "a b")


class Model:
    """A stand-in for a pydantic model: ``model_dump`` / ``model_validate`` is the contract."""

    def __init__(self, name: str, when: datetime, nested: Item | None = None) -> None:
        self.name, self.when, self.nested = name, when, nested

    def model_dump(self) -> dict[str, Any]:
        return {"name": self.name, "when": self.when, "nested": self.nested}

    @classmethod
    def model_validate(cls, data: Any) -> Model:
        return cls(**data)

    def __eq__(self, other: object) -> bool:
        return type(other) is Model and vars(self) == vars(other)


class Money:
    """Opts in with the protocol, without registration."""

    def __init__(self, amount: Decimal, currency: str) -> None:
        self.amount, self.currency = amount, currency

    def __actorflow_encode__(self) -> object:
        return {"amount": self.amount, "currency": self.currency}

    @classmethod
    def __actorflow_decode__(cls, data: Any) -> Money:
        return cls(**data)

    def __eq__(self, other: object) -> bool:
        return type(other) is Money and vars(self) == vars(other)


class Vec:
    """Registered with :func:`register`."""

    def __init__(self, *xs: float) -> None:
        self.xs = xs

    def __eq__(self, other: object) -> bool:
        return type(other) is Vec and self.xs == other.xs


register(Vec, name="tests.Vec", encode=lambda v: v.xs, decode=lambda xs: Vec(*xs))


class Opaque:
    """Supported by nothing."""

    def __repr__(self) -> str:
        return "Opaque()"


class BadModel:
    def model_dump(self) -> dict[str, Any]:
        raise RuntimeError("dump exploded")

    @classmethod
    def model_validate(cls, data: Any) -> BadModel:
        return cls()


class OrderError(Exception):
    def __init__(self, order_id: str, reason: str = "") -> None:
        super().__init__(order_id, reason)
        self.order_id = order_id
        self.retries = [1, 2]


class NeedsTwo(Exception):
    """Its args (one formatted message) cannot rebuild it: ``NeedsTwo(msg)`` is a TypeError."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a} and {b} disagree")


def same(a: Any, b: Any) -> None:
    """Assert ``b`` equals ``a`` with the same types all the way down (``1 == 1.0 == True``)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    elif isinstance(a, Decimal) and a.is_nan():
        assert str(a) == str(b)
    elif isinstance(a, dict):
        assert len(a) == len(b)
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            same(ka, kb)
            same(va, vb)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same(x, y)
    elif isinstance(a, set | frozenset):
        assert len(a) == len(b)
        for x in a:
            (y,) = [y for y in b if y == x]
            same(x, y)
    elif isinstance(a, datetime | time):
        assert a == b and a.utcoffset() == b.utcoffset() and a.fold == b.fold
        assert (a.tzinfo is None) == (b.tzinfo is None)
        if isinstance(a.tzinfo, ZoneInfo):
            assert a.tzinfo is b.tzinfo
    else:
        assert a == b


def ident(value: Any) -> str:
    try:
        return repr(value)[:50]
    except ValueError:  # an int past the int/str conversion limit
        return f"<{type(value).__name__}>"


def round_trip(value: Any) -> Any:
    """Through the tree and through bytes; both must give the same value back."""
    tree = to_tree(value)
    orjson.dumps(tree)  # a tree is always plain JSON
    back = from_tree(tree)
    same(value, back)
    same(value, loads(dumps(value)))
    return back


# --- plain JSON ---------------------------------------------------------------------------------

PLAIN: list[Any] = [
    None,
    True,
    0,
    -(2**63),
    2**64 - 1,
    1.5,
    -0.0,
    "",
    "héllo ✓",
    [],
    {},
    {"a": [1, {"b": None}], "c": "x$", "": 2, "d$": [True, 2.5]},
]


@pytest.mark.parametrize("value", PLAIN, ids=ident)
def test_plain_json_maps_to_itself(value: Any) -> None:
    tree = to_tree(value)
    same(value, tree)
    same(value, from_tree(tree))
    assert dumps(value) == orjson.dumps(value)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text().filter(lambda k: not k.startswith("$")), inner, max_size=5)
    ),
    max_leaves=25,
)


@given(json_values)
def test_plain_json_maps_to_itself_generated(value: Any) -> None:
    tree = to_tree(value)
    same(value, tree)
    same(value, from_tree(orjson.loads(orjson.dumps(tree))))


# --- every other type ---------------------------------------------------------------------------

PARIS = ZoneInfo("Europe/Paris")

TYPED = [
    datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC),
    datetime(2024, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
    datetime(2024, 5, 1, 12, 30, tzinfo=PARIS),
    datetime(2024, 10, 27, 2, 30, tzinfo=PARIS, fold=1),  # the repeated hour, second time
    datetime(2024, 3, 31, 2, 30, tzinfo=PARIS),  # inside the DST gap: kept as given
    datetime(2024, 5, 1, 12, 30, 15),  # naive
    datetime(2024, 10, 27, 2, 30, fold=1),
    date(1999, 12, 31),
    time(23, 59, 59, 999999),
    time(8, 0, tzinfo=timezone(timedelta(hours=2))),
    time(2, 30, fold=1),
    timedelta(days=-3, seconds=5, microseconds=7),
    timedelta(0),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Decimal("1.10"),
    Decimal("-1E+400"),
    Decimal("NaN"),
    Decimal("-Infinity"),
    b"",
    b"\x00\xff binary",
    bytearray(b"mutable"),
    (),
    (1, "a", (2.5, None)),
    set(),
    {1, "a", (2, 3)},
    frozenset({b"x", 3}),
    {frozenset({1}): "frozen key", (1, 2): "tuple key", 3: "int key", None: 0, True: 1},
    {"$bytes": "AAE="},
    {"$": 1, "$$": 2, "plain": 3},
    {"$enc": "1.0123456789abcdef.ZGF0YQ"},
    2**64,
    -(2**63) - 1,
    10**5000,  # past int/str conversion limits: hex is used
    float("nan"),
    float("inf"),
    float("-inf"),
    Color.RED,
    Level.HIGH,
    Perm.R | Perm.W,
    Planet.EARTH,
    {Color.BLUE: [Level.LOW]},
    Item("a1", 2, frozenset({"x"})),
    Order(
        uuid.UUID(int=7),
        [Item("a"), Item("b", 3)],
        datetime(2024, 1, 1, tzinfo=PARIS),
        Decimal("9.99"),
    ),
    Pair(1, (2, 3)),
    OldPair([1], {"k": 2}),
    Model("m", datetime(2024, 1, 1), Item("n")),
    Money(Decimal("12.30"), "EUR"),
    Vec(1.0, 2.0, 3.0),
    [Vec(1.0), Money(Decimal(1), "USD"), Model("x", datetime(2020, 2, 2, tzinfo=PARIS))],
]


@pytest.mark.parametrize("value", TYPED, ids=ident)
def test_round_trip_keeps_types(value: Any) -> None:
    round_trip(value)


def test_dataclass_rebuilt_through_its_constructor() -> None:
    order = Order(uuid.uuid4(), [Item("a"), Item("b")], datetime(2024, 1, 1), Decimal(0))
    back = round_trip(order)
    tree: Any = to_tree(order)
    assert back.derived == 2 and "derived" not in tree["$dc"][1]


def test_dollar_keys_are_escaped_so_user_data_is_never_a_tag() -> None:
    assert to_tree({"$bytes": "AAE="}) == {"$dict": [["$bytes", "AAE="]]}
    assert to_tree({"$enc": "x"}) == {"$dict": [["$enc", "x"]]}
    assert to_tree({"a": {"$x": 1}}) == {"a": {"$dict": [["$x", 1]]}}
    assert to_tree({1: "a"}) == {"$dict": [[1, "a"]]}
    assert from_tree(to_tree({"$bytes": "AAE="})) == {"$bytes": "AAE="}
    assert to_tree({"a$": 1, "b": "$c"}) == {"a$": 1, "b": "$c"}  # only a leading $ is escaped


def test_tag_formats() -> None:
    # The log is a storage format: these shapes are read back by later versions.
    assert to_tree((1, 2)) == {"$tuple": [1, 2]}
    assert to_tree(b"\x00\x01") == {"$bytes": "AAE="}
    assert to_tree(2**64) == {"$int": "0x10000000000000000"}
    assert to_tree(float("-inf")) == {"$float": "-inf"}
    assert to_tree(datetime(2024, 1, 2, 3, 4, 5)) == {"$dt": "2024-01-02T03:04:05"}
    assert to_tree(datetime(2024, 1, 2, tzinfo=PARIS)) == {
        "$dt": ["2024-01-02T00:00:00+01:00", "Europe/Paris", 0]
    }
    assert to_tree(timedelta(days=1, microseconds=2)) == {"$td": [1, 0, 2]}
    assert to_tree(Color.RED) == {"$enum": ["tests.runtime.test_codec:Color", "red"]}
    assert to_tree(Item("a")) == {
        "$dc": ["tests.runtime.test_codec:Item", {"sku": "a", "qty": 1, "tags": {"$frozenset": []}}]
    }
    assert to_tree(Vec(1.5)) == {"$reg": ["tests.Vec", {"$tuple": [1.5]}]}


@given(st.sets(st.text(), max_size=8))
def test_sets_encode_in_a_canonical_order(items: set[str]) -> None:
    backwards = set()
    for item in reversed(list(items)):
        backwards.add(item)
    assert to_tree(items) == to_tree(backwards)
    assert digest(to_tree(items)) == digest(to_tree(backwards))


def test_set_order_does_not_depend_on_insertion_history() -> None:
    first, second = {1, 9}, {9, 1}
    assert list(first) != list(second)  # the same set, iterated differently
    assert to_tree(first) == to_tree(second) == {"$set": [1, 9]}


hashables = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.binary(max_size=8)
    | st.sampled_from(list(Color) + list(Level))
    | st.uuids()
    | st.dates(),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)

zones = st.none() | st.just(UTC) | st.sampled_from([PARIS, ZoneInfo("America/New_York")])
scalars = (
    hashables
    | st.floats()
    | st.decimals()
    | st.datetimes(timezones=zones)
    | st.times()
    | st.timedeltas()
    | st.builds(bytearray, st.binary(max_size=8))
)
keys = hashables | st.text().map(lambda s: "$" + s)


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(keys, inner, max_size=4)
        | st.dictionaries(st.text(), inner, max_size=4)
        | st.sets(hashables, max_size=4)
        | st.builds(Item, st.text(), st.integers(), st.frozensets(st.text(), max_size=3))
        | st.builds(Pair, st.integers(), st.lists(inner, max_size=3).map(tuple))
        | st.builds(Money, st.decimals(allow_nan=False), st.text())
    )


values = st.recursive(scalars, containers, max_leaves=20)


@given(values)
def test_round_trip_generated(value: Any) -> None:
    round_trip(value)
    tree = to_tree(value)
    assert digest(to_tree(from_tree(tree))) == digest(tree)


# --- errors name the path -----------------------------------------------------------------------

UNSUPPORTED = "object of type tests.runtime.test_codec:Opaque is not supported"


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (Opaque(), "payload"),
        ({"items": [0, 1, 2, {"when": Opaque()}]}, 'payload["items"][3]["when"]'),
        ({"items": [0, 1, 2, Item(sku=Opaque())]}, 'payload["items"][3].sku'),  # type: ignore[arg-type]
        ({"tags": {1, ("a", Opaque())}}, "payload[\"tags\"]{('a', Opaque())}[1]"),
        (frozenset({Opaque()}), "payload{Opaque()}"),
        ({3: [Opaque()]}, "payload[3][0]"),
        ({"$x": {"y": Opaque()}}, 'payload["$x"]["y"]'),
        ({Opaque(): 1}, "payload[key Opaque()]"),
        ((1, (2, Opaque())), "payload[1][1]"),
        (Pair(1, (Opaque(),)), "payload[1][0]"),  # type: ignore[arg-type]
        ({"héllo": [Opaque()]}, 'payload["héllo"][0]'),
        (Model("m", Opaque()), 'payload["when"]'),  # type: ignore[arg-type]
        (Money(Opaque(), "EUR"), 'payload["amount"]'),  # type: ignore[arg-type]
    ],
)
def test_unencodable_value_names_its_path(value: Any, path: str) -> None:
    with pytest.raises(SerializationError) as info:
        to_tree(value, "payload")
    assert str(info.value).startswith(f"cannot encode {path}: {UNSUPPORTED}")
    assert "register" in str(info.value)


def test_default_root_is_value() -> None:
    with pytest.raises(SerializationError, match=r"^cannot encode value\[0\]: "):
        to_tree([Opaque()])
    with pytest.raises(SerializationError, match=r"^cannot encode value\[0\]: "):
        dumps([Opaque()])


def test_subclass_of_a_builtin_is_refused_with_a_hint() -> None:
    with pytest.raises(SerializationError, match="convert it to a plain dict"):
        to_tree(collections.OrderedDict(a=1))


def test_class_that_cannot_be_imported_is_refused_when_encoding() -> None:
    @dataclasses.dataclass
    class Local:
        x: int

    with pytest.raises(SerializationError, match=r"cannot be found again by that import path"):
        to_tree({"k": Local(1)}, "args")


def test_failing_user_encoder_is_chained() -> None:
    with pytest.raises(SerializationError, match=r"result\.m: .*dump exploded") as info:
        to_tree({"m": BadModel()}.get("m"), "result.m")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_lone_surrogate_is_refused() -> None:
    with pytest.raises(SerializationError, match=r'value\["a"\]\[0\]: text with a lone surrogate'):
        to_tree({"a": ["\ud800"]})
    with pytest.raises(SerializationError, match="lone surrogate"):
        to_tree({"\udcff": 1})


def test_time_with_a_zone_rule_is_refused() -> None:
    with pytest.raises(SerializationError, match="not a fixed offset"):
        to_tree(time(8, tzinfo=PARIS))


def test_cycles_and_depth_are_refused_before_orjson_would() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(SerializationError, match="nested deeper than 200 levels"):
        to_tree(cycle)
    deep: Any = 1
    for _ in range(codec.MAX_DEPTH):
        deep = [deep]
    orjson.dumps(to_tree(deep))
    with pytest.raises(SerializationError, match="nested deeper"):
        to_tree([deep])
    with pytest.raises(SerializationError, match="nested deeper"):
        to_tree(((deep,),))


# --- decoding malformed trees -------------------------------------------------------------------


def test_encrypted_envelope_reaching_the_codec_is_refused() -> None:
    with pytest.raises(SerializationError, match="encrypted value reached the codec undecrypted"):
        from_tree({"$enc": "1.0123456789abcdef.ZGF0YQ"})
    with pytest.raises(SerializationError, match=r'value\["p"\]\[1\]: encrypted value'):
        from_tree({"p": [0, {"$enc": "1.x.y"}]})


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"$nope": 1}, "unknown tag '$nope'"),
        ({"$tuple": 3}, "malformed $tuple value: expected a list"),
        ({"a": [{"$bytes": "not base64!"}]}, 'value["a"][0]: malformed $bytes'),
        ({"$float": "1.5"}, "expected nan, inf or -inf"),
        ({"$td": [1, 2]}, "expected [days, seconds, microseconds]"),
        ({"$dict": [[1]]}, "expected a [key, value] pair"),
        ({"$dict": [[[1], 2]]}, "malformed $dict"),
        ({"$dt": "yesterday"}, "malformed $dt"),
        ({"$dt": ["2024-01-01T00:00:00", "No/Such_Zone", 0]}, "malformed $dt"),
        ({"$dc": "x"}, "expected [name, value]"),
        ({"$dc": ["no_such_module_xyz:Thing", {}]}, "no_such_module_xyz:Thing named in the log"),
        ({"$dc": ["tests.runtime.test_codec:Gone", {}]}, "test_codec:Gone named in the log"),
        ({"$nt": ["os:system", ["echo"]]}, "os:system is not a class"),
        ({"$nt": ["tests.runtime.test_codec:Item", []]}, "Item is not a named tuple"),
        ({"$enum": ["tests.runtime.test_codec:Item", 1]}, "test_codec:Item is not a enum"),
        ({"$dc": ["os:path", {}]}, "os:path is not a class"),
        ({"$dc": ["tests.runtime.test_codec:Item", {"nope": 1}]}, "test_codec:Item rejected"),
        ({"$enum": ["tests.runtime.test_codec:Color", "green"]}, "Color rejected"),
        ({"$reg": ["tests.NoSuchName", 1]}, "no class is registered under 'tests.NoSuchName'"),
        ({"$reg": ["tests.Vec", 1]}, "the decoder registered as 'tests.Vec' raised"),
        ((1, 2), "tuple is not a JSON value"),
    ],
)
def test_malformed_tree_is_refused(tree: Any, message: str) -> None:
    with pytest.raises(SerializationError) as info:
        from_tree(tree)
    assert message in str(info.value)


def test_loads_refuses_bad_json() -> None:
    with pytest.raises(SerializationError, match="cannot decode JSON"):
        loads(b"{nope")


# --- digest -------------------------------------------------------------------------------------


def test_digest_is_stable_and_ignores_dict_order() -> None:
    tree = to_tree({"args": [1, "a", (2, 3)], "kwargs": {"b": None, "a": Item("x")}})
    # Replay compares digests recorded by earlier processes and versions: pin one.
    assert digest(tree) == "b4711e6c0944d9703ba4659d7f1531d6"
    reordered = to_tree({"kwargs": {"a": Item("x"), "b": None}, "args": [1, "a", (2, 3)]})
    assert digest(reordered) == digest(tree)
    assert digest(to_tree([1, "a", [2, 3]])) != digest(to_tree([1, "a", (2, 3)]))
    assert len(digest(None)) == 32


def test_digest_refuses_what_is_not_a_tree() -> None:
    with pytest.raises(SerializationError, match="not a tree"):
        digest({"when": datetime(2024, 1, 1)})  # type: ignore[dict-item]
    with pytest.raises(SerializationError, match="not a tree"):
        digest({1: 2})  # type: ignore[dict-item]


# --- register -----------------------------------------------------------------------------------


class Renamed:
    def __init__(self, v: int) -> None:
        self.v = v


def test_register_rename_keeps_the_old_name_readable() -> None:
    register(Renamed, name="tests.Renamed.v1", encode=lambda r: r.v, decode=Renamed)
    old = to_tree(Renamed(1))
    register(Renamed, name="tests.Renamed.v2", encode=lambda r: [r.v], decode=lambda d: Renamed(*d))
    assert to_tree(Renamed(2)) == {"$reg": ["tests.Renamed.v2", [2]]}
    assert from_tree(old).v == 1


@pytest.mark.parametrize("cls", [datetime, dict, str, tuple, type(None)])
def test_register_refuses_types_the_codec_handles(cls: type) -> None:
    with pytest.raises(WorkflowDefinitionError, match="cannot be registered"):
        register(cls, name="tests.builtin", encode=str, decode=str)


def test_register_refuses_a_name_held_by_another_class() -> None:
    with pytest.raises(WorkflowDefinitionError, match="already registered"):
        register(Opaque, name="tests.Vec", encode=repr, decode=lambda _: Opaque())
    with pytest.raises(WorkflowDefinitionError, match="non-empty"):
        register(Opaque, name="", encode=repr, decode=lambda _: Opaque())


# --- exceptions ---------------------------------------------------------------------------------


def failing_step(exc: BaseException) -> None:
    raise exc


def raised(exc: BaseException) -> BaseException:
    try:
        failing_step(exc)
    except BaseException as caught:
        return caught
    raise AssertionError("unreachable")


def stored(exc: BaseException) -> BaseException:
    """What a workflow gets back: through the tree and the log's bytes."""
    tree = error_to_tree(raised(exc))
    return error_from_tree(orjson.loads(orjson.dumps(tree)))


def remote_traceback(exc: BaseException) -> str:
    text = getattr(exc, "__actorflow_traceback__")  # noqa: B009
    assert isinstance(text, str)
    return text


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad input", 3),
        KeyError("missing"),
        FileNotFoundError(2, "No such file or directory", "/tmp/x"),
        FatalError("stop"),
        RetryableError("again", retry_after=5),
        OrderError("o-1", "out of stock"),
        ExceptionGroup("group", [ValueError(1)]),
    ],
    ids=ident,
)
def test_exception_comes_back_as_the_same_class(exc: BaseException) -> None:
    back = stored(exc)
    assert type(back) is type(exc)
    assert repr(back) == repr(exc)
    assert str(back) == str(exc)
    text = remote_traceback(back)
    assert "in failing_step" in text and type(exc).__name__ in text


def test_builtin_exception_keeps_attributes_and_notes() -> None:
    exc = FileNotFoundError(2, "No such file or directory", "/tmp/x")
    exc.add_note("while loading the config")
    back = stored(exc)
    assert isinstance(back, FileNotFoundError)
    assert (back.errno, back.filename) == (2, "/tmp/x")
    assert back.__notes__ == ["while loading the config"]


def test_user_exception_attributes_are_restored() -> None:
    back = stored(OrderError("o-1", "out of stock"))
    assert isinstance(back, OrderError)
    assert back.order_id == "o-1" and back.retries == [1, 2]


def test_exception_whose_init_reformats_its_message_is_restored() -> None:
    back = stored(HookNotFoundError("tok-1"))
    assert isinstance(back, HookNotFoundError)
    assert back.token == "tok-1"
    assert str(back) == str(HookNotFoundError("tok-1"))


def test_exception_that_cannot_be_rebuilt_falls_back_to_step_error() -> None:
    back = stored(NeedsTwo(1, 2))
    assert type(back) is StepError
    assert back.type_name == "tests.runtime.test_codec:NeedsTwo"
    assert back.message == "1 and 2 disagree"
    assert str(back) == "tests.runtime.test_codec:NeedsTwo: 1 and 2 disagree"
    assert "in failing_step" in back.remote_traceback
    assert remote_traceback(back) == back.remote_traceback


def test_exception_with_unencodable_args_falls_back() -> None:
    back = stored(ValueError(Opaque()))
    assert isinstance(back, StepError)
    assert back.type_name == "builtins:ValueError" and back.message == "Opaque()"


def test_local_exception_class_falls_back() -> None:
    class Local(Exception):
        pass

    back = stored(Local("x"))
    assert isinstance(back, StepError) and back.type_name.endswith("<locals>.Local")


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3)], ids=ident)
def test_base_exceptions_are_never_rebuilt(exc: BaseException) -> None:
    # Raising these in a workflow would pass for a real interrupt of the runtime.
    back = stored(exc)
    assert isinstance(back, StepError)
    assert back.type_name == f"builtins:{type(exc).__name__}"


def test_error_tree_is_plain_data() -> None:
    tree = error_to_tree(raised(OrderError("o-9")))
    assert isinstance(tree, dict)
    assert tree["type"] == "tests.runtime.test_codec:OrderError"
    assert tree["args"] == ["o-9", ""]
    assert tree["attrs"] == {"order_id": "o-9", "retries": [1, 2]}
    assert isinstance(tree["traceback"], str) and "raise exc" in tree["traceback"]
    assert from_tree(tree) == tree  # no tags: it survives any JSON store as is


def test_step_error_keeps_its_original_type_when_stored_again() -> None:
    first = stored(NeedsTwo(3, 4))
    again = error_from_tree(error_to_tree(raised(first)))
    assert isinstance(again, StepError)
    assert again.type_name == "tests.runtime.test_codec:NeedsTwo"
    assert again.message == "3 and 4 disagree"
    # Where the step failed, then where the workflow re-raised it.
    text = again.remote_traceback
    assert text.index("NeedsTwo") < text.index("Re-raised in the workflow")


def test_re_raised_exception_keeps_the_step_traceback() -> None:
    first = stored(ValueError("v"))
    tree = error_to_tree(raised(first))
    assert isinstance(tree, dict) and isinstance(tree["traceback"], str)
    assert tree["traceback"].startswith(remote_traceback(first))


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_error_to_tree_never_raises() -> None:
    tree = error_to_tree(Unprintable())
    assert isinstance(tree, dict) and tree["message"] == "<unprintable Unprintable>"


@pytest.mark.parametrize("tree", [None, [], {"type": 1, "message": "m"}, {"type": "x:Y"}])
def test_malformed_error_tree_is_refused(tree: Any) -> None:
    with pytest.raises(SerializationError, match="malformed error record"):
        error_from_tree(tree)


def test_error_from_tree_only_imports_exception_classes() -> None:
    back = error_from_tree({"type": "os:system", "message": "m", "args": ["echo"], "traceback": ""})
    assert isinstance(back, StepError)


def test_public_names() -> None:
    assert sorted(codec.__all__) == sorted(
        [
            "MAX_DEPTH",
            "JSONValue",
            "StepError",
            "digest",
            "dumps",
            "error_from_tree",
            "error_to_tree",
            "from_tree",
            "loads",
            "register",
            "to_tree",
        ]
    )
    for name in codec.__all__:
        assert getattr(codec, name) is not None
    fn: Callable[..., Any] = codec.to_tree
    assert fn.__doc__
