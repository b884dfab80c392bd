"""One run's actor: its mailbox, its live machine, and the commands it turns into events.

An actor is resident (a live machine), or absent (passivated or never woken: only the run's
``RunState`` remains). Messages are the run's completion events, delivered in log order after
they are durable. A resident actor feeds them to its machine in place, so a resume costs the
same whatever the length of the history. An absent actor is rebuilt by replaying the run's events
from the log; messages that the replay already covered (by log position) are skipped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import codec
from .core import events as ev
from .core.commands import (
    CancelWait,
    Command,
    CompleteRun,
    CreateHook,
    CreateWait,
    DisposeHook,
    FailRun,
    Respond,
    StartStep,
)
from .core.events import Event
from .core.machine import Machine
from .ids import derived_token, new_id, new_token
from .state import RunState

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["Actor"]

_FEEDABLE = frozenset({ev.STEP_COMPLETED, ev.STEP_FAILED, ev.HOOK_RECEIVED, ev.WAIT_COMPLETED})


class Actor:
    """The mailbox and live machine of one run."""

    __slots__ = (
        "run", "rt", "machine", "mailbox", "scheduled", "rebuilding", "replayed_upto",
        "last_active", "crashes", "missing_workflow", "waking",
    )  # fmt: skip

    def __init__(self, rt: Runtime, run: RunState) -> None:
        self.run = run
        self.rt = rt
        self.machine: Machine | None = None
        self.mailbox: deque[Event] = deque()
        self.scheduled = False
        self.rebuilding = False
        self.replayed_upto = -1
        self.last_active = 0.0
        self.crashes: list[float] = []
        self.missing_workflow = False
        #: Queued behind recovery's background wakes (see Supervisor.rebuild_worker).
        self.waking = False

    # -- messages ----------------------------------------------------------------------------

    def process(self) -> None:
        """Feed every message in the mailbox to the live machine."""
        machine = self.machine
        assert machine is not None
        mailbox = self.mailbox
        run = self.run
        while mailbox:
            event = mailbox.popleft()
            if event.type == ev.HOOK_RECEIVED and event.data.get("external"):
                run.external -= 1
            if event.position <= self.replayed_upto:
                continue
            if event.type == ev.RUN_CANCELLED:
                self.drop()
                return
            if event.type in _FEEDABLE and not machine.done:
                machine.feed(event)
        self._count_untaken(machine)

    def can_build_in_place(self) -> bool:
        """True for a new run whose only event (``run_created``) is in the mailbox."""
        run = self.run
        return (
            len(run.positions) == 1
            and bool(self.mailbox)
            and self.mailbox[0].type == ev.RUN_CREATED
            and self.mailbox[0].position == run.positions[0]
        )

    def build(self, events: Sequence[Event]) -> None:
        """Rebuild the machine from the run's events (decrypted), replaying them."""
        if self.run.finished:
            return
        created = events[0]
        workflow = self.rt.workflows.get(self.run.workflow_name)
        if workflow is None:
            self.missing_workflow = True
            self.rt.log_missing_workflow(self.run)
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
            sink=self._sink,
            codec=codec,
            new_id=new_id,
            new_token=self._token_maker(created),
            recorded=recorded,
            base_url=created.data.get("base_url", self.rt.base_url),
            max_calls=self.rt.max_calls_per_run,
            max_hooks=self.rt.max_hooks_per_run,
            scope_probe=self.rt.scope_probe,
        )
        self.machine = machine
        self.replayed_upto = events[-1].position
        if self.run.status == "pending":
            self.rt.append(Event(new_id("evnt_"), self.run.run_id, ev.RUN_STARTED, None,
                                 self.rt.clock(), {}))  # fmt: skip
        machine.start()
        for event in events:
            if machine.done:
                break
            if event.type in _FEEDABLE:
                machine.feed(event)
        self._count_untaken(machine)

    def _count_untaken(self, machine: Machine) -> None:
        # Payloads fed to a hook that nobody awaits still count against its mailbox bound.
        tokens = self.rt.state.tokens
        for hook in machine.take_changed():
            entry = tokens.get(hook.token)
            if entry is not None and entry.hook_id == hook.hook_id:
                entry.untaken = len(hook.buffer) if hook.buffer else 0

    def _token_maker(self, created: Event) -> Callable[[int], str]:
        seed = created.data.get("token_seed")
        if not isinstance(seed, str):  # a run created before seeds were recorded
            return lambda index: new_token()
        run_id = self.run.run_id
        return lambda index: derived_token(seed, run_id, index)

    def drop(self) -> None:
        """Forget the live machine (passivation, cancellation, crash); emits nothing."""
        machine, self.machine = self.machine, None
        if machine is not None:
            machine.close()

    # -- commands ----------------------------------------------------------------------------

    def _event(self, kind: str, corr: str | None, data: dict[str, Any]) -> Event:
        return Event(new_id("evnt_"), self.run.run_id, kind, corr, self.rt.clock(), data)

    def _sink(self, command: Command) -> Any:
        rt = self.rt
        if self.run.finished:
            return None
        if isinstance(command, StartStep):
            rt.append(self._event(ev.STEP_STARTED, command.step_id, {
                "name": command.name, "args": command.args, "digest": command.digest,
                "max_retries": command.options.max_retries,
            }))  # fmt: skip
            rt.steps.start(command.step_id)
        elif isinstance(command, CreateHook):
            entry = rt.state.tokens.get(command.token)
            holder = entry.run_id if entry is not None else None
            if holder is None and command.chosen and rt.cluster is not None:
                # Other nodes' hooks are not in this node's index: the shared one decides.
                holder = rt.cluster.claim_token(command.token, self.run.run_id, command.hook_id)
            base = {"token": command.token, "chosen": command.chosen}
            if holder is not None:
                base["holder"] = holder
                base["webhook"] = command.webhook is not None
                rt.append(self._event(ev.HOOK_CONFLICT, command.hook_id, base))
                return holder
            base["metadata"] = command.metadata
            base["webhook"] = command.webhook
            if command.schema is not None:
                base["schema"] = command.schema
            rt.append(self._event(ev.HOOK_CREATED, command.hook_id, base))
        elif isinstance(command, DisposeHook):
            entry = rt.state.tokens.get(command.token)
            received = (
                entry.received if entry is not None and entry.hook_id == command.hook_id else 0
            )
            rt.append(self._event(ev.HOOK_DISPOSED, command.hook_id, {
                "token": command.token, "received": received,
            }))  # fmt: skip
            return received
        elif isinstance(command, CreateWait):
            rt.append(self._event(ev.WAIT_CREATED, command.wait_id, {
                "resume_at": command.resume_at, "purpose": command.purpose,
            }))  # fmt: skip
            rt.timers.add(command.wait_id, command.resume_at)
        elif isinstance(command, CancelWait):
            rt.append(self._event(ev.WAIT_CANCELLED, command.wait_id, {}))
        elif isinstance(command, Respond):
            rt.append(self._event(ev.WEBHOOK_RESPONDED, command.hook_id, {
                "request_event_id": command.request_event_id, "response": command.response,
            }))  # fmt: skip
        elif isinstance(command, CompleteRun):
            rt.append(self._event(ev.RUN_COMPLETED, None, {"result": command.result}))
        elif isinstance(command, FailRun):
            rt.append(self._event(ev.RUN_FAILED, None, {"error": command.error_tree}))
        return None
