"""Typed hooks (``af.define_hook``), end to end on a real file log, on asyncio and on trio.

A payload is validated and converted against the hook's schema before anything is written, by
every way in: ``TypedHook.resume``, ``Runtime.resume_hook`` and ``actorflow.api.resume_hook``.
The schema's import path is recorded in ``hook_created``, so it still applies after a restart.
Rejection raises ``HookPayloadError`` listing every problem, and appends nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

import anyio
import pytest
from tests.conftest import RecordingStore, read_events, wait_for_hook

import actorflow as af
from actorflow.runtime import codec
from actorflow.runtime.crypto import ENV_VAR, KeyRing, generate_key
from actorflow.runtime.log.file_log import FileLog

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _no_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


# -- schemas (module level: their import path is recorded in the log) -----------------------


@dataclass
class Person:
    name: str
    level: int


@dataclass
class Approval:
    verdict: Literal["approve", "reject"]
    amount: float
    approver: Person
    reviewers: list[Person] = field(default_factory=list)
    note: str | None = None


class _ShipmentOptions(TypedDict, total=False):
    gift: bool


class Shipment(_ShipmentOptions):
    sku: str
    quantity: int
    weight: float


class Parcel(TypedDict):
    """``NotRequired`` under ``from __future__ import annotations`` (as in this module)."""

    sku: str
    gift: NotRequired[bool]


class StandInValidationError(Exception):
    """What pydantic's ``ValidationError`` offers the runtime: ``errors()`` with loc and msg."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(problems)} validation errors")
        self._problems = problems

    def errors(self) -> list[dict[str, Any]]:
        return self._problems


class Order:
    """A pydantic-style model without pydantic: ``model_validate`` and ``model_dump``."""

    def __init__(self, order_id: str, total: float) -> None:
        self.order_id = order_id
        self.total = total

    @classmethod
    def model_validate(cls, value: Any) -> Order:
        if not isinstance(value, dict):
            raise StandInValidationError([{"loc": (), "msg": "Input should be an object"}])
        problems: list[dict[str, Any]] = []
        order_id, total = value.get("order_id"), value.get("total")
        if not isinstance(order_id, str):
            problems.append({"loc": ("order_id",), "msg": "Input should be a valid string"})
        if isinstance(total, bool) or not isinstance(total, int | float):
            problems.append({"loc": ("total",), "msg": "Input should be a valid number"})
        for key in value:
            if key not in ("order_id", "total"):
                problems.append({"loc": (key,), "msg": "Extra inputs are not permitted"})
        if problems:
            raise StandInValidationError(problems)
        return cls(str(order_id), float(total))

    def model_dump(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "total": self.total}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Order) and (other.order_id, other.total) == (
            self.order_id,
            self.total,
        )

    def __hash__(self) -> int:
        return hash((self.order_id, self.total))

    def __repr__(self) -> str:
        return f"Order({self.order_id!r}, {self.total!r})"


class Terse:
    """A model whose validation error has no ``errors()``: its message is the one problem."""

    @classmethod
    def model_validate(cls, value: Any) -> Terse:
        if value != {}:
            raise ValueError("terse says no")
        return cls()

    def model_dump(self) -> dict[str, Any]:
        return {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Terse)

    def __hash__(self) -> int:
        return 0


APPROVAL = af.define_hook(Approval)
SHIPMENT = af.define_hook(Shipment)
ORDER = af.define_hook(Order)
TERSE = af.define_hook(Terse)
PARCEL = af.define_hook(Parcel)
HOOKS: dict[str, af.TypedHook[Any]] = {"dataclass": APPROVAL, "typeddict": SHIPMENT, "model": ORDER}
KINDS = ["dataclass", "model", "typeddict"]


@af.workflow(name="typed_collect")
async def typed_collect(kind: str, tag: str, count: int) -> list[Any]:
    """Takes ``count`` payloads from a typed hook and returns them as the workflow saw them."""
    typed = TERSE if kind == "terse" else HOOKS[kind]
    hook = typed.create(token=f"typed:{kind}:{tag}", metadata={"kind": kind})
    return [await hook for _ in range(count)]


# -- what each schema accepts, and what it becomes --------------------------------------------

GOOD: dict[str, tuple[Any, Any]] = {
    # payload as sent (ints where floats are due, dicts where dataclasses are), and as converted
    "dataclass": (
        {
            "verdict": "approve",
            "amount": 3,
            "approver": {"name": "ann", "level": 2},
            "reviewers": [{"name": "bo", "level": 1}, {"name": "cy", "level": 3}],
        },
        Approval("approve", 3.0, Person("ann", 2), [Person("bo", 1), Person("cy", 3)]),
    ),
    "typeddict": (
        {"sku": "sku-1", "quantity": 2, "weight": 1},
        {"sku": "sku-1", "quantity": 2, "weight": 1.0},
    ),
    "model": ({"order_id": "o-1", "total": 5}, Order("o-1", 5.0)),
}

BAD: dict[str, tuple[Any, set[str]]] = {
    # payload with several problems, and the path of each one HookPayloadError must list
    "dataclass": (
        {
            "verdict": "maybe",
            "amount": "lots",
            "approver": {"name": 5},
            "reviewers": [{"name": "bo", "level": "high"}],
            "extra": 1,
        },
        {
            "payload.verdict",
            "payload.amount",
            "payload.approver.name",
            "payload.approver.level",
            "payload.reviewers[0].level",
            "payload.extra",
        },
    ),
    "typeddict": (
        {"sku": 1, "quantity": 1.5, "gift": "yes"},
        {"payload.sku", "payload.quantity", "payload.weight", "payload.gift"},
    ),
    "model": ({"order_id": 7, "total": "x", "extra": 1}, {"order_id", "total", "extra"}),
}


def check_converted(kind: str, value: Any) -> None:
    """``value`` is the converted form of ``GOOD[kind]``, with the converted types."""
    assert value == GOOD[kind][1]
    if kind == "dataclass":
        assert isinstance(value, Approval) and isinstance(value.amount, float)
        assert isinstance(value.approver, Person)
        assert all(isinstance(r, Person) for r in value.reviewers)
    elif kind == "typeddict":
        assert type(value) is dict and isinstance(value["weight"], float)
    else:
        assert isinstance(value, Order) and isinstance(value.total, float)


Resume = Callable[[af.Runtime, str, str, Any], Any]


async def via_typed_hook(rt: af.Runtime, kind: str, token: str, payload: Any) -> Any:
    return await HOOKS[kind].resume(token, payload)


async def via_runtime(rt: af.Runtime, kind: str, token: str, payload: Any) -> Any:
    return await rt.resume_hook(token, payload)


async def via_api(rt: af.Runtime, kind: str, token: str, payload: Any) -> Any:
    return await af.api.resume_hook(token, payload)


WAYS = {"typed_hook": via_typed_hook, "runtime": via_runtime, "api": via_api}


def paths_of(problems: list[str]) -> set[str]:
    return {problem.split(":", 1)[0] for problem in problems}


def logged_payloads(data_dir: Path, token: str) -> list[Any]:
    return [
        codec.from_tree(e.data["payload"])
        for e in read_events(data_dir / "log")
        if e.type == "hook_received" and e.data["token"] == token
    ]


# -- accepting and converting ----------------------------------------------------------------


@pytest.mark.parametrize("way", sorted(WAYS))
@pytest.mark.parametrize("kind", KINDS)
async def test_payload_is_converted_before_it_is_written(
    tmp_path: Path, kind: str, way: str
) -> None:
    token = f"typed:{kind}:ok"
    async with af.Runtime(tmp_path, workflows=[typed_collect]) as rt:
        run = await rt.start(typed_collect, kind, "ok", 1)
        await wait_for_hook(rt, token)
        record = await WAYS[way](rt, kind, token, GOOD[kind][0])
        assert record.token == token and record.run_id == run.run_id
        assert record.metadata == {"kind": kind}
        with anyio.fail_after(30):
            (received,) = await run.result()
    check_converted(kind, received)
    # What the log holds is the converted value, not what was sent.
    (stored,) = logged_payloads(tmp_path, token)
    check_converted(kind, stored)
    created = next(e for e in read_events(tmp_path / "log") if e.type == "hook_created")
    schema = {"dataclass": Approval, "typeddict": Shipment, "model": Order}[kind]
    assert created.data["schema"] == f"{schema.__module__}:{schema.__qualname__}"


async def test_an_instance_of_the_schema_is_taken_as_it_is(tmp_path: Path) -> None:
    value = GOOD["dataclass"][1]
    async with af.Runtime(tmp_path, workflows=[typed_collect]) as rt:
        run = await rt.start(typed_collect, "dataclass", "inst", 2)
        await wait_for_hook(rt, "typed:dataclass:inst")
        await APPROVAL.resume("typed:dataclass:inst", value)
        await rt.resume_hook("typed:dataclass:inst", value)
        with anyio.fail_after(30):
            assert await run.result() == [value, value]


# -- rejecting, with every problem listed and nothing written --------------------------------


@pytest.mark.parametrize("way", sorted(WAYS))
@pytest.mark.parametrize("kind", KINDS)
async def test_rejected_payload_lists_every_problem_and_writes_nothing(
    tmp_path: Path, kind: str, way: str
) -> None:
    token = f"typed:{kind}:bad"
    store = RecordingStore(FileLog(tmp_path / "log"))
    async with af.Runtime(tmp_path, workflows=[typed_collect], store=store) as rt:
        run = await rt.start(typed_collect, kind, "bad", 1)
        await wait_for_hook(rt, token)
        await rt.wait_idle()
        before = store.records
        payload, paths = BAD[kind]
        with pytest.raises(af.HookPayloadError) as info:
            await WAYS[way](rt, kind, token, payload)
        assert info.value.token == token
        assert paths_of(info.value.problems) == paths
        for problem in info.value.problems:  # each one is named in the message too
            assert problem in str(info.value)
        # Not an object at all: one problem, at the root.
        with pytest.raises(af.HookPayloadError) as info:
            await WAYS[way](rt, kind, token, "not an object")
        assert len(info.value.problems) == 1
        await rt.wait_idle()
        assert store.records == before
        assert rt.state.runs[run.run_id].external == 0
        # The hook is unharmed: a good payload still goes through.
        await WAYS[way](rt, kind, token, GOOD[kind][0])
        with anyio.fail_after(30):
            (received,) = await run.result()
    check_converted(kind, received)
    assert len(logged_payloads(tmp_path, token)) == 1


async def test_model_error_without_errors_method_is_still_reported(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[typed_collect]) as rt:
        run = await rt.start(typed_collect, "terse", "plain", 1)
        await wait_for_hook(rt, "typed:terse:plain")
        with pytest.raises(af.HookPayloadError) as info:
            await TERSE.resume("typed:terse:plain", {"anything": 1})
        assert info.value.problems == ["terse says no"]
        # ... and a root-level problem from errors() (empty loc) is put at "payload".
        await rt.resume_hook("typed:terse:plain", Terse())
        with anyio.fail_after(30):
            assert await run.result() == [Terse()]
    with pytest.raises(af.HookPayloadError) as info:
        ORDER.validate(None)
    assert info.value.problems == ["payload: Input should be an object"]


async def test_rejection_is_the_same_with_an_idempotency_key(tmp_path: Path) -> None:
    token = "typed:dataclass:idem"
    store = RecordingStore(FileLog(tmp_path / "log"))
    async with af.Runtime(tmp_path, workflows=[typed_collect], store=store) as rt:
        run = await rt.start(typed_collect, "dataclass", "idem", 1)
        await wait_for_hook(rt, token)
        await rt.wait_idle()
        before = store.records
        with pytest.raises(af.HookPayloadError):
            await rt.resume_hook(token, BAD["dataclass"][0], idempotency_key="k1")
        await rt.wait_idle()
        assert store.records == before
        # The key was not spent on the rejected payload.
        first = await rt.resume_hook(token, GOOD["dataclass"][0], idempotency_key="k1")
        again = await rt.resume_hook(token, GOOD["dataclass"][0], idempotency_key="k1")
        assert first == again
        with anyio.fail_after(30):
            (received,) = await run.result()
    check_converted("dataclass", received)
    assert len(logged_payloads(tmp_path, token)) == 1


# -- the schema survives a restart -----------------------------------------------------------


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("kind", KINDS)
async def test_schema_still_applies_after_a_restart(
    tmp_path: Path, kind: str, encrypted: bool
) -> None:
    key = generate_key() if encrypted else None
    token = f"typed:{kind}:restart"
    async with af.Runtime(tmp_path, workflows=[typed_collect], encryption_key=key) as rt:
        run = await rt.start(typed_collect, kind, "restart", 2)
        await wait_for_hook(rt, token)
        await HOOKS[kind].resume(token, GOOD[kind][0])
    store = RecordingStore(FileLog(tmp_path / "log"))
    async with af.Runtime(
        tmp_path, workflows=[typed_collect], store=store, encryption_key=key
    ) as rt:
        # Nothing of the workflow has run yet in this process: the schema comes from the log.
        await rt.wait_idle()
        before = store.records
        with pytest.raises(af.HookPayloadError) as info:
            await rt.resume_hook(token, BAD[kind][0])
        assert paths_of(info.value.problems) == BAD[kind][1]
        await rt.wait_idle()
        assert store.records == before
        await rt.resume_hook(token, GOOD[kind][0])
        with anyio.fail_after(30):
            received = await rt.get_run(run.run_id).result()
    assert len(received) == 2
    for value in received:
        check_converted(kind, value)
    created = next(e for e in read_events(tmp_path / "log") if e.type == "hook_created")
    assert KeyRing.is_envelope(created.data["metadata"]) is encrypted
    assert isinstance(created.data["schema"], str)  # plain: inspection needs no key


# -- what define_hook accepts ----------------------------------------------------------------


def test_define_hook_refuses_what_is_not_a_schema() -> None:
    class Plain:
        pass

    for schema in (int, dict, Plain):
        with pytest.raises(af.WorkflowDefinitionError, match="dataclass, a TypedDict"):
            af.define_hook(schema)


def test_define_hook_refuses_a_schema_it_could_not_find_after_a_restart() -> None:
    @dataclass
    class Local:
        value: int

    with pytest.raises(af.WorkflowDefinitionError, match="module level"):
        af.define_hook(Local)


def test_validate_converts_without_a_runtime() -> None:
    check_converted("dataclass", APPROVAL.validate(GOOD["dataclass"][0]))
    with pytest.raises(af.HookPayloadError) as info:
        SHIPMENT.validate(BAD["typeddict"][0], "some-token")
    assert info.value.token == "some-token"
    assert paths_of(info.value.problems) == BAD["typeddict"][1]


def test_not_required_key_of_a_typeddict_may_be_left_out() -> None:
    assert PARCEL.validate({"sku": "s"}) == {"sku": "s"}
