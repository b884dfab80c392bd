"""The pure core, driven by hand: no event loop, no files, no clock.

A :class:`Harness` plays the actor's part: it turns the machine's commands into events in a list
(as ``actor.py`` does), keeps the token index, and decides when steps finish, payloads arrive and
timers fire. Ids and random tokens come from counters, so a replay that makes the same calls gets
the same ids and two logs can be compared event by event.

The property test at the end is the one STYLE asks for: replaying any prefix of a valid log, then
feeding the rest of its completions, gives exactly the log (and outcome) of the live run.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actorflow as af
from actorflow.runtime import codec
from actorflow.runtime.command_events import ANSWERED, event_of
from actorflow.runtime.core import events as ev
from actorflow.runtime.core.commands import (
    CancelStep,
    CancelWait,
    Command,
    CompleteRun,
    CreateHook,
    CreateWait,
    DisposeHook,
    FailRun,
    ParkRun,
    Respond,
    StartStep,
)
from actorflow.runtime.core.events import Event
from actorflow.runtime.core.machine import Machine, current_machine
from actorflow.runtime.state import RunState, State

T0 = 1_700_000_000.0
RUN_ID = "wrun_machine_test"
FEEDABLE = frozenset({ev.STEP_COMPLETED, ev.STEP_FAILED, ev.HOOK_RECEIVED, ev.WAIT_COMPLETED})
ID_EVENTS = frozenset({ev.STEP_STARTED, ev.HOOK_CREATED, ev.HOOK_CONFLICT, ev.WAIT_CREATED})


class Harness:
    """One run's log, folded by the real ``State``, and the actor's part done by hand.

    Commands become events with the actor's own ``event_of``; the answers a hook's creation
    and dispose need are decided from the fold's token index and fed back, as ``actor.py`` does.
    """

    def __init__(
        self,
        workflow: af.workflow,  # type: ignore[valid-type]
        *args: Any,
        held: dict[str, str] | None = None,
        on_divergence: str = "fail",
    ) -> None:
        self.workflow = workflow
        self.on_divergence = on_divergence
        self.args = args
        self.clock = T0
        self.ids = 0
        self.token_count = 0
        self.state = State()
        # Tokens held by other runs: real runs of the fold, each with its live hook.
        for number, (token, run) in enumerate((held or {}).items()):
            self.state.apply(
                Event(f"evnt_o{number}", run, ev.RUN_CREATED, None, T0, {"workflow": "o"})
            )
            self.state.apply(Event(f"evnt_h{number}", run, ev.HOOK_CREATED, "hook_other", T0,
                                   {"token": token, "chosen": True, "metadata": None, "webhook": None}))  # fmt: skip
        created = Event("evnt_0", RUN_ID, ev.RUN_CREATED, None, T0, {"workflow": "w"}, 0)
        self.events: list[Event] = [created]
        self.state.apply(created)
        self.commands: list[Command] = []
        self.machine: Machine | None = None

    # -- ids, events, state ----------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}{self.ids:04d}"

    def new_token(self, index: int) -> str:
        self.token_count += 1
        return f"random-token-{self.token_count:04d}"

    def append(self, kind: str, corr: str | None, data: dict[str, Any]) -> Event:
        event = Event(f"evnt_{len(self.events)}", RUN_ID, kind, corr, self.clock, data)
        event.position = len(self.events)
        self.events.append(event)
        self.state.apply(event)
        return event

    @property
    def run(self) -> RunState:
        return self.state.runs[RUN_ID]

    @property
    def finished(self) -> Event | None:
        return self.run.terminal

    @property
    def tokens(self) -> dict[str, tuple[str, str]]:
        return {t: (e.hook_id, e.run_id) for t, e in self.state.tokens.items()}

    @property
    def timers(self) -> dict[str, float]:
        return {w: t.resume_at for w, t in self.state.timers.items()}

    @property
    def steps(self) -> dict[str, tuple[str, Any]]:
        return {s: (p.name, codec.from_tree(p.args)) for s, p in self.state.steps.items()}

    def drive(self, commands: list[Command]) -> None:
        """``Actor._carry_out``, minus the I/O: record each command, feed answers back."""
        queue = collections.deque(commands)
        while queue:
            command = queue.popleft()
            self.commands.append(command)
            if self.finished is not None:
                continue
            holder: str | None = None
            received = 0
            if isinstance(command, CreateHook):
                entry = self.state.tokens.get(command.token)
                holder = entry.run_id if entry is not None else None
            elif isinstance(command, DisposeHook):
                entry = self.state.tokens.get(command.token)
                if entry is not None and entry.hook_id == command.hook_id:
                    received = entry.received
            if isinstance(command, Respond):
                raise AssertionError("no webhooks here")
            if isinstance(command, CancelStep):
                # Re-issued on replay: recorded only while the step has no outcome yet.
                if command.step_id in self.state.steps:
                    self.append(ev.STEP_CANCELLED, command.step_id, {"reason": "first"})
                continue
            event = self.append(*event_of(command, holder=holder, received=received))
            if isinstance(command, ANSWERED):
                assert self.machine is not None
                queue.extend(self.machine.answer(event))

    def make_machine(self, recorded: Sequence[Event] = ()) -> Machine:
        self.machine = Machine(
            run_id=RUN_ID,
            workflow_name="w",
            workflow=self.workflow.fn,  # type: ignore[attr-defined]
            args=list(self.args),
            kwargs={},
            started_at=T0,
            codec=codec,
            new_id=self.new_id,
            new_token=self.new_token,
            recorded=recorded,
            on_divergence=self.on_divergence,
        )
        return self.machine

    def start(self) -> Machine:
        machine = self.make_machine()
        self.drive(machine.start())
        return machine

    # -- completions -------------------------------------------------------------------------

    def feed(self, kind: str, corr: str, data: dict[str, Any]) -> Event:
        self.clock += 1
        event = self.append(kind, corr, data)
        assert self.machine is not None
        self.drive(self.machine.feed(event))
        return event

    def resume(self, token: str, payload: Any) -> Event:
        hook_id = self.tokens[token][0]
        tree = codec.to_tree(payload)
        return self.feed(ev.HOOK_RECEIVED, hook_id, {"payload": tree, "token": token})

    def complete_step(self, step_id: str, result: Any) -> Event:
        return self.feed(ev.STEP_COMPLETED, step_id, {"result": codec.to_tree(result)})

    def fail_step(self, step_id: str, exc: BaseException) -> Event:
        return self.feed(ev.STEP_FAILED, step_id, {"error": codec.error_to_tree(exc)})

    def fire(self, wait_id: str) -> Event:
        self.clock = max(self.clock, self.timers[wait_id]) - 1
        return self.feed(ev.WAIT_COMPLETED, wait_id, {})

    def delivered(self, token: str) -> int:
        return sum(
            1 for e in self.events if e.type == ev.HOOK_RECEIVED and e.data["token"] == token
        )

    def only_step(self) -> str:
        (step_id,) = self.steps
        return step_id

    def outcome(self) -> Any:
        assert self.finished is not None, "the run has not ended"
        if self.finished.type == ev.RUN_COMPLETED:
            return ("completed", codec.from_tree(self.finished.data["result"]))
        error = codec.error_from_tree(self.finished.data["error"])
        return ("failed", type(error).__name__, str(error))

    def error(self) -> BaseException:
        assert self.finished is not None and self.finished.type == ev.RUN_FAILED
        return codec.error_from_tree(self.finished.data["error"])

    def types(self) -> list[str]:
        return [e.type for e in self.events]


def replay(workflow: Any, log: Sequence[Event], *args: Any, on_divergence: str = "fail") -> Harness:
    """A new harness holding ``log``, whose machine is rebuilt from it as ``Actor.build`` does."""
    harness = Harness(workflow, *args, on_divergence=on_divergence)
    harness.events = [copy_event(e) for e in log]
    for event in harness.events[1:]:
        harness.state.apply(event)
        harness.clock = event.created_at
    harness.ids = sum(1 for e in log if e.type in ID_EVENTS)
    harness.token_count = sum(
        1 for e in log if e.type in (ev.HOOK_CREATED, ev.HOOK_CONFLICT) and not e.data["chosen"]
    )
    machine = harness.make_machine([e for e in harness.events if e.type in ev.COMMAND_EVENTS])
    harness.commands = []
    harness.drive(machine.start())
    for event in harness.events:
        if machine.done:
            break
        if event.type in FEEDABLE:
            harness.drive(machine.feed(event))
    return harness


def copy_event(e: Event) -> Event:
    return Event(e.event_id, e.run_id, e.type, e.correlation_id, e.created_at, e.data, e.position)


def shape(events: Sequence[Event]) -> list[tuple[Any, ...]]:
    """Events without their ids and times of writing: what must be equal across replays."""
    return [(e.type, e.correlation_id, e.data) for e in events]


# -- workflows and steps (the harness decides their results; their bodies never run) -----------


@af.step
async def m_double(x: int) -> int:
    return 2 * x


@af.step(max_retries=0)
async def m_refuse(reason: str) -> None:
    raise af.FatalError(reason)


@af.workflow
async def linear(n: int) -> Any:
    doubled = await m_double(n)
    hook = af.create_hook(token="approve")
    payload = await hook
    await af.sleep("1h")
    return [doubled, payload, af.now().timestamp() - T0]


def run_linear() -> Harness:
    h = Harness(linear, 4)
    h.start()
    h.complete_step(h.only_step(), 8)
    h.resume("approve", "yes")
    h.fire(next(iter(h.timers)))
    return h


def test_a_new_run_emits_one_command_per_durable_call() -> None:
    assert current_machine() is None
    h = Harness(linear, 4)
    h.start()
    assert [type(c) for c in h.commands] == [StartStep]
    assert isinstance(h.commands[0], StartStep) and h.commands[0].name.endswith("m_double")
    h.complete_step(h.only_step(), 8)
    assert [type(c) for c in h.commands] == [StartStep, CreateHook]
    h.resume("approve", "yes")
    created = h.commands[-1]
    assert isinstance(created, CreateWait) and created.resume_at == h.clock + 3600
    h.fire(created.wait_id)
    assert isinstance(h.commands[-1], CompleteRun)
    assert h.outcome() == ("completed", [8, "yes", 3600 + 2])  # now() = the timer's event time
    assert current_machine() is None  # the machine's context does not leak


def test_replaying_a_whole_history_emits_nothing_but_the_end() -> None:
    live = run_linear()
    before_end = live.events[:-1]
    again = replay(linear, before_end, 4)
    assert [type(c) for c in again.commands] == [CompleteRun]
    assert shape(again.events) == shape(live.events)


def test_replay_does_not_call_id_or_token_factories_for_recorded_calls() -> None:
    live = run_linear()
    again = replay(linear, live.events[:-1], 4)
    assert again.ids == live.ids and again.token_count == live.token_count


# -- divergence --------------------------------------------------------------------------------


@af.workflow
async def linear_other_arg(n: int) -> Any:
    doubled = await m_double(n + 1)  # same step, other arguments
    hook = af.create_hook(token="approve")
    return [doubled, await hook]


@af.workflow
async def linear_other_token(n: int) -> Any:
    doubled = await m_double(n)
    hook = af.create_hook(token="approve-v2")
    return [doubled, await hook]


@af.workflow
async def linear_other_sleep(n: int) -> Any:
    doubled = await m_double(n)
    payload = await af.create_hook(token="approve")
    await af.sleep("2h")
    return [doubled, payload]


@af.workflow
async def linear_swallows(n: int) -> Any:
    try:
        await m_refuse("other step")  # diverges at call #0
    except Exception:
        return "swallowed by except Exception"
    return "unreachable"


@af.workflow
async def linear_swallows_everything(n: int) -> Any:
    try:
        await m_refuse("other step")
    except BaseException:  # noqa: B036 - a user doing the wrong thing must not hide divergence
        pass
    return "swallowed by except BaseException"


@pytest.mark.parametrize(
    ("changed", "position", "got"),
    [
        (linear_other_arg, 0, "m_double"),
        (linear_other_token, 1, "approve-v2"),
        (linear_other_sleep, 2, "sleep until"),
        (linear_swallows, 0, "m_refuse"),
        (linear_swallows_everything, 0, "m_refuse"),
    ],
)
def test_divergence_is_detected_on_the_whole_call(changed: Any, position: int, got: str) -> None:
    live = run_linear()
    again = replay(changed, live.events[:-1], 4, on_divergence="fail")
    error = again.error()
    assert isinstance(error, af.ReplayDivergenceError)
    assert error.position == position and got in error.got
    # Nothing else was emitted: the run fails instead of continuing on a wrong history.
    assert [type(c) for c in again.commands] == [FailRun]


@pytest.mark.parametrize(
    ("changed", "position", "got"),
    [
        (linear_other_arg, 0, "m_double"),
        (linear_other_token, 1, "approve-v2"),
        (linear_other_sleep, 2, "sleep until"),
        (linear_swallows, 0, "m_refuse"),
        (linear_swallows_everything, 0, "m_refuse"),
    ],
)
def test_a_parking_machine_emits_the_park_and_nothing_else(
    changed: Any, position: int, got: str
) -> None:
    live = run_linear()
    again = replay(changed, live.events[:-1], 4, on_divergence="park")
    (park,) = again.commands
    assert isinstance(park, ParkRun)
    assert park.position == position and got in park.attempted
    assert "m_double" in park.recorded or park.position > 0
    assert again.finished is None  # no terminal event: the run is not ended
    assert again.types()[-1] == ev.RUN_PARKED
    # The same history replays cleanly with the code that wrote it, park or not.
    assert [
        type(c) for c in replay(linear, live.events[:-1], 4, on_divergence="park").commands
    ] == [CompleteRun]


# -- patches -------------------------------------------------------------------------------------


@af.workflow
async def patched_linear(n: int) -> Any:
    doubled = await m_double(n)
    extra = await m_double(100) if af.patched("extra-double") else None
    again = af.patched("extra-double")  # the first answer holds for the rest of the run
    hook = af.create_hook(token="approve")
    return [doubled, extra, again, await hook]


def test_patched_is_false_for_a_run_that_started_before_the_patch() -> None:
    live = Harness(linear, 4)
    live.start()
    live.complete_step(live.only_step(), 8)
    # Replayed with the patched code: no marker where the history has the hook, so False.
    again = replay(patched_linear, live.events, 4)
    assert again.commands == []
    again.resume("approve", "yes")
    assert again.outcome() == ("completed", [8, None, False, "yes"])
    assert ev.PATCH_MARKED not in again.types()


def test_patched_is_recorded_for_a_new_run_and_replays_true() -> None:
    live = Harness(patched_linear, 4)
    live.start()
    live.complete_step(live.only_step(), 8)
    assert live.types().count(ev.PATCH_MARKED) == 1
    marker = next(e for e in live.events if e.type == ev.PATCH_MARKED)
    assert marker.data == {"patch": "extra-double"}
    live.complete_step(live.only_step(), 200)
    again = replay(patched_linear, live.events, 4)
    assert again.commands == []  # the marker matched: nothing new, not even a second marker
    again.resume("approve", "yes")
    assert again.outcome() == ("completed", [8, 200, True, "yes"])


@af.workflow
async def deprecated_linear(n: int) -> Any:
    doubled = await m_double(n)
    af.deprecate_patch("extra-double")
    extra = await m_double(100)
    hook = af.create_hook(token="approve")
    return [doubled, extra, True, await hook]


def test_deprecate_patch_matches_a_marker_and_needs_none() -> None:
    marked = Harness(patched_linear, 4)
    marked.start()
    marked.complete_step(marked.only_step(), 8)
    marked.complete_step(marked.only_step(), 200)
    again = replay(deprecated_linear, marked.events, 4)
    assert again.commands == []
    again.resume("approve", "ok")
    assert again.outcome() == ("completed", [8, 200, True, "ok"])
    fresh = Harness(deprecated_linear, 4)
    fresh.start()
    fresh.complete_step(fresh.only_step(), 8)
    assert ev.PATCH_MARKED not in fresh.types()


# -- hooks ---------------------------------------------------------------------------------------


@af.workflow
async def buffered(n: int) -> Any:
    hook = af.create_hook(token="buf")
    gate = af.create_hook(token="gate")
    await gate
    got = [await hook for _ in range(n)]
    hook.dispose()
    try:
        await hook
    except af.WorkflowDefinitionError as exc:
        got.append(f"disposed: {'disposed' in str(exc)}")
    return got


def test_payloads_before_the_await_are_buffered_in_order() -> None:
    h = Harness(buffered, 3)
    h.start()
    for i in range(3):
        h.resume("buf", i)
    h.resume("gate", None)
    assert h.outcome() == ("completed", [0, 1, 2, "disposed: True"])
    disposed = [c for c in h.commands if isinstance(c, DisposeHook)]
    assert [c.token for c in disposed] == ["buf"]
    assert "buf" not in h.tokens


@af.workflow
async def take_one_then_dispose(n: int) -> Any:
    hook = af.create_hook(token="drain")
    got = []
    async for payload in hook:
        got.append(payload)
        hook.dispose()
    return got


def test_a_dispose_drains_payloads_accepted_before_it_but_not_yet_fed() -> None:
    h = Harness(take_one_then_dispose, 0)
    h.start()
    hook_id = h.tokens["drain"][0]
    machine = h.machine
    assert machine is not None
    # Both are accepted (logged) before the machine sees the first: "late" is in flight when
    # the workflow disposes the hook, as when both share one batch of the log writer.
    h.clock += 1
    first = h.append(ev.HOOK_RECEIVED, hook_id, {"payload": "first", "token": "drain"})
    late = h.append(ev.HOOK_RECEIVED, hook_id, {"payload": "late", "token": "drain"})
    h.drive(machine.feed(first))
    disposed = h.events[-1]
    assert disposed.type == ev.HOOK_DISPOSED and disposed.data["received"] == 2
    assert h.finished is None  # the disposed hook still owes the payload it accepted
    h.drive(machine.feed(late))
    assert h.outcome() == ("completed", ["first", "late"])
    again = replay(take_one_then_dispose, h.events[:-1], 0)
    assert again.outcome() == h.outcome()


@af.workflow
async def conflicted(token: str) -> Any:
    hook = af.create_hook(token=token)
    try:
        await hook
    except af.HookConflictError as exc:
        return [exc.token, exc.conflicting_run_id]
    return "no conflict"


def test_a_conflict_is_raised_at_the_await_and_replayed_from_the_log() -> None:
    h = Harness(conflicted, "taken", held={"taken": "wrun_other"})
    h.start()
    assert h.outcome() == ("completed", ["taken", "wrun_other"])
    assert ev.HOOK_CONFLICT in h.types()
    # On replay the token is free (the other run ended); the recorded conflict still wins.
    again = replay(conflicted, h.events[:-1], "taken")
    assert again.outcome() == h.outcome()
    assert [type(c) for c in again.commands] == [CompleteRun]


@af.workflow
async def race(n: int) -> Any:
    hook = af.create_hook(token="race")
    index, value = await af.first(hook, af.sleep(60))
    second = await hook
    return [index, value, second]


def test_first_hook_wins_cancels_the_timer() -> None:
    h = Harness(race, 0)
    h.start()
    (wait_id,) = h.timers
    h.resume("race", "a")
    assert [type(c) for c in h.commands] == [CreateHook, CreateWait, CancelWait]
    assert h.timers == {}
    h.resume("race", "b")
    assert h.outcome() == ("completed", [0, "a", "b"])


def test_first_sleep_wins_and_the_payload_waits_for_the_next_await() -> None:
    h = Harness(race, 0)
    h.start()
    h.fire(next(iter(h.timers)))
    assert not any(isinstance(c, CancelWait) for c in h.commands)
    h.resume("race", "late")
    assert h.outcome() == ("completed", [1, None, "late"])


@af.workflow
async def gathered(n: int) -> Any:
    a = af.create_hook(token="a")
    b = af.create_hook(token="b")
    results = await af.gather(b, m_double(n), a)
    try:
        await af.gather(m_refuse("first"), a)
    except af.FatalError as exc:
        results.append(str(exc))
    return results


def test_gather_orders_results_by_argument_and_propagates_the_first_failure() -> None:
    h = Harness(gathered, 5)
    h.start()
    h.resume("a", "A")
    h.complete_step(h.only_step(), 10)
    h.resume("b", "B")
    h.fail_step(h.only_step(), af.FatalError("first"))
    assert h.outcome() == ("completed", ["B", 10, "A", "first"])


class Foreign:
    def __await__(self) -> Any:
        yield "not an actorflow operation"


@af.workflow
async def foreign(n: int) -> Any:
    await Foreign()


def test_a_foreign_await_fails_the_run_naming_what_was_awaited() -> None:
    h = Harness(foreign, 0)
    h.start()
    error = h.error()
    assert isinstance(error, af.NonDeterministicAwaitError)
    assert "not an actorflow operation" in str(error)


@af.workflow
async def deterministic_values(n: int) -> Any:
    first_values = [af.random(), str(af.uuid4()), af.now().timestamp()]
    token = af.create_hook().token
    await af.sleep(10)
    return [first_values, token, af.now().timestamp()]


def test_random_uuid_now_and_tokens_are_the_same_on_replay() -> None:
    h = Harness(deterministic_values, 0)
    h.start()
    h.fire(next(iter(h.timers)))
    again = replay(deterministic_values, h.events[:-1], 0)
    assert again.outcome() == h.outcome()
    (values, token, later) = h.outcome()[1]
    assert values[2] == T0 and later == T0 + 10
    assert token == "random-token-0001"


# -- the property: replaying any prefix gives the live run's log ------------------------------


@af.workflow
async def scenario(n: int) -> Any:
    approvals = af.create_hook(token="approvals")
    anonymous = af.create_hook()
    base = await m_double(n)
    stamp = [af.random(), str(af.uuid4())]
    index, value = await af.first(approvals, af.sleep("1h"))
    try:
        pair = await af.gather(m_double(base), approvals.wait(timeout="30m"))
    except af.HookTimeoutError:
        pair = ["timeout"]
    with af.create_hook(token="extra") as extra:
        which = await af.first(extra, anonymous, af.sleep(600))
    try:
        await m_refuse("no")
    except af.FatalError as exc:
        refused = str(exc)
    return [base, stamp, index, value, pair, list(which), refused, af.now().timestamp()]


def actions(h: Harness, payload: int) -> list[tuple[str, Callable[[], Event]]]:
    """What may happen next: a step ends, a payload arrives on a live token, the next timer."""
    out: list[tuple[str, Callable[[], Event]]] = []
    for step_id, (name, args) in sorted(h.steps.items()):
        if name.endswith("m_double"):
            out.append(("step", lambda s=step_id, a=args: h.complete_step(s, 2 * a["args"][0])))
        else:
            out.append(("step", lambda s=step_id: h.fail_step(s, af.FatalError("no"))))
    for token, (_, run_id) in sorted(h.tokens.items()):
        if run_id == RUN_ID and h.delivered(token) < 2:  # a few payloads each, then progress
            out.append(("resume", lambda t=token: h.resume(t, payload)))
    if h.timers:
        wait_id = min(h.timers, key=lambda w: (h.timers[w], w))
        out.append(("timer", lambda w=wait_id: h.fire(w)))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_replaying_any_prefix_of_a_log_gives_the_live_run(data: st.DataObject) -> None:
    live = Harness(scenario, 3)
    live.start()
    for payload in range(100):
        if live.finished is not None:
            break
        options = actions(live, payload)
        assert options, "the run is stuck"
        _, act = options[data.draw(st.integers(0, len(options) - 1))]
        act()
    assert live.finished is not None and live.finished.type == ev.RUN_COMPLETED
    for k in range(1, len(live.events) + 1):
        again = replay(scenario, live.events[:k], 3)
        # Continue with the live run's completions; the machine must make the same calls.
        for event in live.events[k:]:
            if event.type in FEEDABLE and again.finished is None:
                again.clock = event.created_at - 1
                again.feed(event.type, event.correlation_id or "", event.data)
        assert shape(again.events) == shape(live.events), f"prefix {k}"
        assert again.outcome() == live.outcome()
