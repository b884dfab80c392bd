"""One run's actor: its mailbox, its live machine, and the commands it turns into events.

An actor is resident (a live machine), or absent (passivated or never woken: only the run's
``RunState`` remains). Messages are the run's completion events, delivered in log order after
they are durable. A resident actor feeds them to its machine in place, so a resume costs the
same whatever the length of the history. An absent actor is rebuilt by replaying the run's events
from the log; messages that the replay already covered (by log position) are skipped.

Commands become events through the journal. Two need an answer for the machine: a hook's
creation (is its token free?) and its dispose (how many payloads had it accepted?). Both are
answered from this process's index at once, except a chosen token that only a shared database
can decide: then the claim runs as a task of the supervisor, the actor holds its remaining
commands and its mailbox, and carries on when the answer comes. The dispatcher never waits.

A *parked* actor has no machine and builds none: its run's code is missing, or no longer fits
the history (``ParkRun``), or the run belongs to another version of the code. Its messages stay
in the mailbox (outside deliveries are bounded there as anywhere), its hooks, timers and keys
stay in the state, and a later build (``Supervisor.retry``, or the next start) replays it. A
divergence or a missing workflow is recorded once (``run_parked``); a build that replays the
whole history again records ``run_unparked``.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import codec
from .command_events import divergence_data, event_of
from .core import events as ev
from .core.commands import (
    CancelStep,
    CloseStream,
    Command,
    CreateHook,
    CreateWait,
    DisposeHook,
    ParkRun,
    StartStep,
    WriteChunk,
)
from .core.events import Event
from .core.machine import Machine
from .ids import derived_token, new_id, new_token
from .journal import Journal
from .limits import Identity, Limits
from .mailbox import Admission, Mailbox
from .ownership import Ownership
from .registry import Registry
from .state import RunState, State

__all__ = ["Actor", "ActorHost", "ActorServices"]

logger = logging.getLogger("actorflow.runtime")

#: "Only a claim in the shared index can tell who holds this token."
_ASK = object()

_FEEDABLE = frozenset({ev.STEP_COMPLETED, ev.STEP_FAILED, ev.HOOK_RECEIVED, ev.WAIT_COMPLETED})


class ActorHost(Protocol):
    """The supervisor, as an actor sees it."""

    def schedule(self, actor: Actor) -> None: ...

    def crashed(self, actor: Actor, exc: Exception) -> None: ...

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None: ...


class StepStarter(Protocol):
    def start(self, step_id: str) -> None: ...

    def stop(self, step_id: str) -> None: ...


class TimerArm(Protocol):
    def add(self, wait_id: str, resume_at: float) -> None: ...


class StreamWrites(Protocol):
    def from_workflow(self, run_id: str, command: WriteChunk | CloseStream) -> None: ...


@dataclass(slots=True)
class ActorServices:
    """What every actor of a runtime uses (one instance, shared)."""

    journal: Journal
    state: State
    registry: Registry
    ownership: Ownership
    admission: Admission
    steps: StepStarter
    timers: TimerArm
    limits: Limits
    identity: Identity
    on_missing_workflow: Callable[[RunState], None]
    scope_probe: Callable[[], object] | None = None
    #: What a divergence does to a run: ``"park"`` it or ``"fail"`` it.
    on_divergence: str = "park"
    #: Where the workflow's stream writes go (the runtime's ``Streams``).
    streams: StreamWrites | None = None
    #: The supervisor (set once it exists).
    host: ActorHost | None = None


class Actor:
    """The mailbox and live machine of one run."""

    __slots__ = (
        "run", "svc", "machine", "mailbox", "scheduled", "rebuilding", "replayed_upto",
        "last_active", "crashes", "parked", "waking", "claiming", "replay_rest",
    )  # fmt: skip

    def __init__(self, svc: ActorServices, run: RunState) -> None:
        self.run = run
        self.svc = svc
        self.machine: Machine | None = None
        self.mailbox = Mailbox()
        self.scheduled = False
        self.rebuilding = False
        self.replayed_upto = -1
        self.last_active = 0.0
        self.crashes: list[float] = []
        #: Build nothing until retried: see the module docstring.
        self.parked = False
        #: Queued behind recovery's background wakes (see Supervisor.rebuild_worker).
        self.waking = False
        #: A chosen token's claim is out; the commands after it wait here.
        self.claiming: deque[Command] | None = None
        #: Events of a replay that a claim interrupted, fed before the mailbox.
        self.replay_rest: deque[Event] | None = None

    # -- messages ----------------------------------------------------------------------------

    def process(self) -> None:
        """Feed every message in the mailbox to the live machine."""
        machine = self.machine
        assert machine is not None
        rest = self.replay_rest
        if rest is not None:
            while rest and self.claiming is None and self.machine is machine:
                self._feed(machine, rest.popleft())
            if not rest:
                self.replay_rest = None
            if self.machine is not machine:
                return  # parked by the rest of its replay
        mailbox = self.mailbox
        run = self.run
        taken = self.svc.admission.taken
        while mailbox and self.claiming is None:
            event = mailbox.popleft()
            kind = event.type
            taken(run, event)
            position = event.position
            if position <= self.replayed_upto:
                continue
            if kind == ev.RUN_CANCELLED:
                self.drop()
                return
            self.replayed_upto = position
            if kind in _FEEDABLE and not machine.done:
                commands = machine.feed(event)
                if commands:
                    self._carry_out(machine, deque(commands))
                    if self.machine is not machine:
                        return  # parked
        if machine.hooks.changed is not None:
            self._count_untaken(machine)

    def _feed(self, machine: Machine, event: Event) -> None:
        self.replayed_upto = max(self.replayed_upto, event.position)
        if event.type in _FEEDABLE and not machine.done:
            commands = machine.feed(event)
            if commands:
                self._carry_out(machine, deque(commands))

    def can_build_in_place(self) -> bool:
        """True for a new run whose only event (``run_created``) is in the mailbox."""
        run = self.run
        first = self.mailbox.peek()
        return (
            len(run.positions) == 1
            and first is not None
            and first.type == ev.RUN_CREATED
            and first.position == run.positions[0]
        )

    def build(self, events: Sequence[Event]) -> None:
        """Rebuild the machine from the run's events (decrypted), replaying them."""
        if self.run.finished:
            return
        svc = self.svc
        version = svc.identity.version
        if version is not None and self.run.version != version:
            self.parked = True  # another version's run: it waits for a runtime of its own
            return
        created = events[0]
        workflow = svc.registry.get(self.run.workflow_name)
        if workflow is None:
            self.parked = True
            svc.on_missing_workflow(self.run)
            if svc.on_divergence == "park":
                self._park({"reason": "missing_workflow", "message": (
                    f"run {self.run.run_id} uses workflow {self.run.workflow_name!r}, which "
                    "this runtime does not have; it waits until that workflow is registered"
                )})  # fmt: skip
            return
        inputs = codec.from_tree(created.data.get("input"))
        recorded = [e for e in events if e.type in ev.COMMAND_EVENTS]
        machine = Machine(
            run_id=self.run.run_id,
            workflow_name=self.run.workflow_name,
            workflow=workflow.fn,
            args=inputs["args"],
            kwargs=inputs["kwargs"],
            started_at=created.created_at,
            codec=codec,
            new_id=new_id,
            new_token=self._token_maker(created),
            recorded=recorded,
            base_url=created.data.get("base_url", svc.identity.base_url),
            max_calls=svc.limits.max_calls_per_run,
            max_hooks=svc.limits.max_hooks_per_run,
            scope_probe=svc.scope_probe,
            on_divergence=svc.on_divergence,
        )
        self.machine = machine
        self.claiming = None
        self.replay_rest = None
        self.replayed_upto = -1
        if self.run.status == "pending":
            svc.journal.record(svc.journal.event(self.run.run_id, ev.RUN_STARTED, None, {}))
        self._carry_out(machine, deque(machine.start()))
        for index, event in enumerate(events):
            if self.machine is not machine:
                return  # parked
            if self.claiming is not None:
                # A claim is out: the rest of the history is fed once it is answered.
                self.replay_rest = deque(events[index:])
                break
            self._feed(machine, event)
        if self.machine is not machine:
            return
        self._count_untaken(machine)
        if self.run.parked is not None and not self.run.finished:
            self._unpark()  # replayed whole, waiting for what comes next

    def _unpark(self) -> None:
        run = self.run
        journal = self.svc.journal
        journal.record(journal.event(run.run_id, ev.RUN_UNPARKED, None, {}))
        logger.info("run %s fits its code again and goes on", run.run_id)

    def _park(self, data: dict[str, Any]) -> None:
        """Stop the run without ending it; record why, unless that is already recorded."""
        self.drop()
        self.parked = True
        run = self.run
        current = run.parked
        if current is not None and all(current.data.get(k) == v for k, v in data.items()):
            return  # parked for this same reason before (a retry with the same code)
        journal = self.svc.journal
        journal.record(journal.event(run.run_id, ev.RUN_PARKED, None, data))
        logger.warning("run %s is parked (it keeps its hooks, timers and history): %s",
                       run.run_id, data.get("message"))  # fmt: skip

    def _count_untaken(self, machine: Machine) -> None:
        # Payloads fed to a hook that nobody awaits still count against its mailbox bound.
        tokens = self.svc.state.tokens
        untaken = self.svc.admission.untaken
        for hook in machine.take_changed():
            entry = tokens.get(hook.token)
            if entry is not None and entry.hook_id == hook.hook_id:
                untaken(entry, len(hook.buffer) if hook.buffer else 0)

    def _token_maker(self, created: Event) -> Callable[[int], str]:
        seed = created.data.get("token_seed")
        if not isinstance(seed, str):  # a run created before seeds were recorded
            return lambda index: new_token()
        run_id = self.run.run_id
        return lambda index: derived_token(seed, run_id, index)

    def _host(self) -> ActorHost:
        host = self.svc.host
        assert host is not None, "actors live under a supervisor"
        return host

    def drop(self) -> None:
        """Forget the live machine (passivation, cancellation, crash); emits nothing."""
        machine, self.machine = self.machine, None
        self.claiming = None
        self.replay_rest = None
        if machine is not None:
            machine.close()

    # -- commands ----------------------------------------------------------------------------

    def _record(self, command: Command, *, holder: str | None = None, received: int = 0) -> Event:
        journal = self.svc.journal
        kind, corr, data = event_of(command, holder=holder, received=received)
        event = Event(new_id("evnt_"), self.run.run_id, kind, corr, journal.clock(), data)
        journal.record(event)
        return event

    def _carry_out(self, machine: Machine, commands: deque[Command]) -> None:
        """Turn commands into events, in order, feeding answers back to the machine."""
        svc = self.svc
        if commands and self.run.parked is not None and type(commands[0]) is not ParkRun:
            # A command past the history: the code replayed all of it, before going on.
            self._unpark()
        while commands:
            if self.run.finished or machine is not self.machine:
                return
            command = commands.popleft()
            kind = type(command)
            if kind is ParkRun:
                assert isinstance(command, ParkRun)
                self._park(divergence_data(command))
                return
            if kind is CreateHook:
                assert isinstance(command, CreateHook)
                holder = self._holder_now(command)
                if holder is _ASK:
                    self.claiming = commands
                    self._host().spawn(functools.partial(self._claim, machine, command))
                    return
                commands.extend(machine.answer(self._hook_answer(command, holder)))
            elif kind is DisposeHook:
                assert isinstance(command, DisposeHook)
                entry = svc.state.tokens.get(command.token)
                received = (
                    entry.received if entry is not None and entry.hook_id == command.hook_id else 0
                )
                commands.extend(machine.answer(self._record(command, received=received)))
            elif kind is CancelStep:
                assert isinstance(command, CancelStep)
                if command.step_id in svc.state.steps:  # no outcome yet (or on replay: none)
                    svc.journal.record(svc.journal.event(
                        self.run.run_id, ev.STEP_CANCELLED, command.step_id, {"reason": "first"}
                    ))  # fmt: skip
                    svc.steps.stop(command.step_id)
            elif kind is WriteChunk or kind is CloseStream:
                assert isinstance(command, WriteChunk | CloseStream) and svc.streams is not None
                svc.streams.from_workflow(self.run.run_id, command)
            else:
                self._record(command)
                if kind is StartStep:
                    assert isinstance(command, StartStep)
                    svc.steps.start(command.step_id)
                elif kind is CreateWait:
                    assert isinstance(command, CreateWait)
                    svc.timers.add(command.wait_id, command.resume_at)

    def _holder_now(self, command: CreateHook) -> str | None | object:
        """The run holding the token, ``None`` if free, or ``_ASK``: only a claim can tell."""
        entry = self.svc.state.tokens.get(command.token)
        if entry is not None:
            return entry.run_id
        if not command.chosen:
            return None  # random tokens are unguessable: no other run can hold one
        decided, holder = self.svc.ownership.decide_token(command.token)
        return holder if decided else _ASK

    def _hook_answer(self, command: CreateHook, holder: object) -> Event:
        return self._record(command, holder=holder if isinstance(holder, str) else None)

    async def _claim(self, machine: Machine, command: CreateHook) -> None:
        """Claim a chosen token in the shared index (off the dispatcher), then carry on."""
        svc = self.svc
        try:
            holder = await svc.ownership.claim_token(command.token, self.run.run_id,
                                                     command.hook_id)  # fmt: skip
        except Exception as exc:
            if machine is self.machine:
                self._host().crashed(self, exc)
            return
        held = self.claiming
        if machine is not self.machine or held is None or self.run.finished:
            # Dropped meanwhile: cancelled or ended (give the claim back, or the token would
            # stay held by a run that is over), or crashed (a rebuild claims it again).
            if holder is None and self.run.finished:
                try:
                    await svc.ownership.release_claim(command.token, self.run.run_id,
                                                      command.hook_id)  # fmt: skip
                    logger.info("gave back the claim on a token of run %s, which has ended",
                                self.run.run_id)  # fmt: skip
                except Exception as exc:
                    # Tokens never reach the log (they may be secrets of the sender's).
                    logger.warning("could not give back a token claim of ended run %s: %s",
                                   self.run.run_id, exc)  # fmt: skip
            return
        self.claiming = None
        try:
            if holder is None:
                # Taken here meanwhile by another of this node's runs?
                local = svc.state.tokens.get(command.token)
                holder = local.run_id if local is not None else None
            held.extend(machine.answer(self._hook_answer(command, holder)))
            self._carry_out(machine, held)
            self._count_untaken(machine)
        except Exception as exc:
            self._host().crashed(self, exc)
            return
        self._host().schedule(self)
