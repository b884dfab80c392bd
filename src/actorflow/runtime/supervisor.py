"""The supervisor: schedules actors, rebuilds them, restarts them, passivates them.

Actors are not tasks. A message makes its actor *ready*; one dispatcher task drains ready actors'
mailboxes in turn (stepping a machine is synchronous, so more tasks would add switches and memory,
not parallelism). That keeps a suspended run down to its state object and, while resident, its
machine: no task, no stack.

Restarts follow OTP's one-for-one rule: an actor whose processing raises (a runtime bug, an
undecryptable record) is dropped and rebuilt from its log; past ``restart_budget`` crashes within
``restart_window`` seconds the run is failed with the cause recorded. The supervisor catches
``Exception`` only: cancellation always passes.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from . import codec
from .actor import Actor, ActorServices
from .core import events as ev
from .core.events import Event
from .journal import Journal
from .read_marks import ReadMarks
from .state import RunState

__all__ = ["Supervisor"]

logger = logging.getLogger("actorflow.runtime")

#: Runs rebuilt per thread hop to the store.
REBUILD_BATCH = 64


class Supervisor:
    def __init__(
        self,
        services: ActorServices,
        *,
        read: Callable[[list[int]], Sequence[bytes]],
        decode: Callable[[bytes, int], Event],
        passivate_after: float,
        max_resident: int,
        restart_budget: int,
        restart_window: float,
    ) -> None:
        self._svc = services
        services.host = self
        self._journal: Journal = services.journal
        self._clock = services.journal.clock
        self._read = read
        #: Reads by position in flight (compaction waits for those begun before a move).
        self.reads = ReadMarks()
        self._decode = decode
        self._task_group: anyio.abc.TaskGroup | None = None
        self._ready: deque[Actor] = deque()
        self._wake = anyio.Event()
        self._resident: OrderedDict[str, Actor] = OrderedDict()
        self._reaper_wake = anyio.Event()
        self._to_rebuild: deque[Actor] = deque()
        #: Runs woken by recovery, rebuilt when no run with a message is waiting.
        self._to_wake: deque[Actor] = deque()
        self._rebuild_wake = anyio.Event()
        self.passivate_after = passivate_after
        self.max_resident = max_resident
        self.restart_budget = restart_budget
        self.restart_window = restart_window
        self.crashes = 0
        self.rebuilt = 0

    @property
    def resident(self) -> int:
        return len(self._resident)

    def mailbox_backlog(self) -> int:
        """Messages waiting in the mailboxes of resident, ready and rebuilding actors."""
        actors = {id(a): a for a in (*self._resident.values(), *self._ready, *self._to_rebuild)}
        return sum(len(actor.mailbox) for actor in actors.values())

    # -- delivery ----------------------------------------------------------------------------

    def deliver(self, run: RunState, event: Event) -> None:
        """Put a durable event in its run's mailbox and make the actor ready."""
        actor = run.actor
        if actor is None:
            if run.finished:
                return
            actor = run.actor = Actor(self._svc, run)
        actor.mailbox.put(event)
        self.schedule(actor)

    def wake(self, run: RunState) -> None:
        """Make sure the run's actor is resident (recovery uses this for unfinished runs)."""
        if run.finished:
            return
        actor = run.actor
        if actor is None:
            actor = run.actor = Actor(self._svc, run)
        self.schedule(actor)

    def schedule(self, actor: Actor) -> None:
        if not actor.scheduled:
            actor.scheduled = True
            ready = self._ready
            if not ready:
                # The dispatcher waits only while nothing is ready, and looks again after each
                # turn: the first ready actor is the one to wake it for (one set per wait, not
                # one per durable message).
                self._wake.set()
            ready.append(actor)

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``fn`` as a task of the supervisor's group (an actor's claim in a database)."""
        assert self._task_group is not None, "the supervisor is not running"
        self._task_group.start_soon(fn)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The dispatcher, the reaper and the rebuild workers, in one task group."""
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                await tg.start(self.dispatch)
                await tg.start(self.reap)
                for _ in range(4):
                    await tg.start(self.rebuild_worker)
                task_status.started()
        finally:
            self._task_group = None

    # -- the dispatcher ----------------------------------------------------------------------

    async def dispatch(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        ready = self._ready
        turns = 0
        while True:
            if not ready:
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            actor = ready.popleft()
            actor.scheduled = False
            run = actor.run
            if run.finished:
                actor.drop()
                actor.mailbox.clear()
                self._forget(actor)
                continue
            if actor.machine is None:
                if actor.parked:
                    continue  # its messages wait in its mailbox for a retry
                if actor.rebuilding:
                    if actor.waking and actor.mailbox:
                        # A message for a run still queued behind recovery's wakes: go first.
                        actor.waking = False
                        self._to_rebuild.append(actor)
                        self._rebuild_wake.set()
                    continue
                if actor.can_build_in_place():
                    created = actor.mailbox.take()
                    self._guard(actor, functools.partial(actor.build, [created]))
                else:
                    actor.rebuilding = True
                    if actor.mailbox:
                        self._to_rebuild.append(actor)
                    else:
                        actor.waking = True
                        self._to_wake.append(actor)
                    self._rebuild_wake.set()
                    continue
            if actor.machine is not None:
                self._guard(actor, actor.process)
            self._touch(actor)
            turns += 1
            if turns % 64 == 0:
                await anyio.lowlevel.checkpoint()

    def _guard(self, actor: Actor, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            self.crashed(actor, exc)

    def _touch(self, actor: Actor) -> None:
        run = actor.run
        if actor.machine is None or run.finished:
            self._forget(actor)
            return
        actor.last_active = self._clock()
        resident = self._resident
        if run.run_id in resident:
            resident.move_to_end(run.run_id)
        else:
            resident[run.run_id] = actor
            if len(resident) == 1:
                self._reaper_wake.set()
            while len(resident) > self.max_resident:
                _, oldest = resident.popitem(last=False)
                self._passivate(oldest)

    def _forget(self, actor: Actor) -> None:
        self._resident.pop(actor.run.run_id, None)
        if actor.run.finished:
            actor.run.actor = None

    # -- rebuilding and restarts -------------------------------------------------------------

    async def rebuild_worker(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Rebuild absent actors that got messages: read their events, replay them.

        A few workers share two queues (runs with a message first, then recovery's wakes), so
        waking 100,000 runs after recovery costs a queue entry each, not a task each. A worker
        takes a batch: one thread hop reads the events of all its runs.
        """
        task_status.started()
        urgent = self._to_rebuild
        background = self._to_wake
        while True:
            batch: list[tuple[Actor, bool]] = []
            while urgent and len(batch) < REBUILD_BATCH:
                batch.append((urgent.popleft(), False))
            while background and len(batch) < REBUILD_BATCH:
                actor = background.popleft()
                if actor.waking:  # else it was promoted to the urgent queue meanwhile
                    actor.waking = False
                    batch.append((actor, True))
            if batch:
                await self._rebuild(batch)
            elif not urgent and not background:
                await self._rebuild_wake.wait()
                self._rebuild_wake = anyio.Event()

    async def _rebuild(self, batch: list[tuple[Actor, bool]]) -> None:
        journal = self._journal
        # A run with events still on their way to disk needs them written (and positioned)
        # before its history can be read; most runs woken here have none.
        if any(journal.unwritten(a.run) for a, _ in batch):
            try:
                await journal.flush()
            except Exception as exc:
                for actor, _ in batch:
                    actor.rebuilding = False
                    self.crashed(actor, exc)
                return
        mark = self.reads.begin()
        wanted = [list(actor.run.positions) for actor, _ in batch]
        flat = [p for positions in wanted for p in positions]
        try:
            records = await anyio.to_thread.run_sync(self._read, flat)
        except Exception as exc:
            for actor, _ in batch:
                actor.rebuilding = False
                self.crashed(actor, exc)
            return
        finally:
            self.reads.end(mark)
        offset = 0
        for (actor, background), positions in zip(batch, wanted, strict=True):
            mine = records[offset : offset + len(positions)]
            offset += len(positions)
            try:
                events = [self._decode(r, p) for r, p in zip(mine, positions, strict=True)]
                self.rebuilt += 1
                actor.rebuilding = False
                self._guard(actor, functools.partial(actor.build, events))
            except Exception as exc:
                actor.rebuilding = False
                self.crashed(actor, exc)
            self._after_rebuild(actor, background)

    def _after_rebuild(self, actor: Actor, background: bool) -> None:
        actor.rebuilding = False
        if actor.mailbox:
            self.schedule(actor)
        elif background and actor.machine is not None:
            # Woken by recovery to replay what the log alone could not settle; nothing arrived
            # meanwhile, so do not keep every suspended run resident after a restart.
            self._passivate(actor)
        elif actor.machine is not None:
            self.schedule(actor)

    async def retry(self, runs: Sequence[RunState]) -> list[RunState]:
        """Rebuild the parked runs among ``runs`` from their logs; those parked again.

        A run whose history the code now replays goes on as if it had never stopped (its
        mailbox is processed next); one that still does not fit stays parked.
        """
        actors: list[Actor] = []
        for run in runs:
            actor = run.actor
            if actor is None or not actor.parked or run.finished or actor.rebuilding:
                continue
            actor.parked = False
            actor.rebuilding = True
            actors.append(actor)
        for start in range(0, len(actors), REBUILD_BATCH):
            await self._rebuild([(a, False) for a in actors[start : start + REBUILD_BATCH]])
        return [actor.run for actor in actors if actor.parked]

    def crashed(self, actor: Actor, exc: Exception) -> None:
        """An actor raised: drop it and rebuild it from its log, within the restart budget."""
        journal = self._journal
        run = actor.run
        self.crashes += 1
        actor.drop()
        self._resident.pop(run.run_id, None)
        now = self._clock()
        actor.crashes = [t for t in actor.crashes if now - t < self.restart_window] + [now]
        if run.finished:
            return
        if len(actor.crashes) > self.restart_budget:
            logger.error(
                "run %s crashed %d times in %.0f s; failing it: %r",
                run.run_id, len(actor.crashes), self.restart_window, exc,
            )  # fmt: skip
            actor.mailbox.clear()
            try:
                journal.record(journal.event(run.run_id, ev.RUN_FAILED, None,
                                             {"error": codec.error_to_tree(exc)}))  # fmt: skip
            except Exception:
                logger.exception("could not record the failure of run %s", run.run_id)
            return
        logger.warning("run %s crashed, rebuilding it from its log: %r", run.run_id, exc,
                       exc_info=exc)  # fmt: skip
        self.schedule(actor)

    # -- passivation -------------------------------------------------------------------------

    def _passivate(self, actor: Actor) -> None:
        if actor.mailbox or actor.rebuilding or actor.scheduled or actor.claiming is not None:
            return
        actor.drop()
        actor.run.actor = None

    async def reap(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Passivate actors idle for ``passivate_after`` seconds."""
        task_status.started()
        resident = self._resident
        while True:
            if not resident or math.isinf(self.passivate_after):
                await self._reaper_wake.wait()
                self._reaper_wake = anyio.Event()
                continue
            now = self._clock()
            while resident:
                run_id, actor = next(iter(resident.items()))
                if now - actor.last_active < self.passivate_after:
                    break
                del resident[run_id]
                self._passivate(actor)
            if resident:
                oldest = next(iter(resident.values()))
                await anyio.sleep(max(0.0, oldest.last_active + self.passivate_after - now))
