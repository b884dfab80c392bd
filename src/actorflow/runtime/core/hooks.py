"""A run's hooks as the machine keeps them: buffers of payloads, waiters, lifecycle, answers.

``Hooks`` is the machine's hook table. Its methods take the machine as their first argument
(``HookHost``) rather than keeping it, so a machine and its table form no reference cycle.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ...errors import HookConflictError, WorkflowDefinitionError
from . import events as ev
from .commands import Command, CreateHook, DisposeHook
from .events import Event
from .modes import SEND, THROW

__all__ = ["DISPOSED", "MAX_TOKEN_LENGTH", "HookHost", "HookState", "Hooks"]


class _Disposed:
    def __repr__(self) -> str:
        return "DISPOSED"


#: The outcome of waiting on a hook that was disposed with nothing left in its buffer.
DISPOSED: Any = _Disposed()

#: Longest hook token a workflow may choose (random tokens are 32 characters).
MAX_TOKEN_LENGTH = 1024


class HookState:
    __slots__ = (
        "hook_id", "token", "metadata", "webhook", "buffer", "waiters", "disposed", "conflict",
        "fed", "expected", "unanswered", "claimant", "askers",
    )  # fmt: skip

    def __init__(
        self, hook_id: str, token: str, metadata: Any, webhook: dict[str, Any] | None
    ) -> None:
        self.hook_id = hook_id
        self.token = token
        self.metadata = metadata
        self.webhook = webhook
        self.buffer: deque[Event] | None = None
        self.waiters: list[Any] = []  # the machine's fibers awaiting a payload
        self.disposed = False
        self.conflict: HookConflictError | None = None
        #: Payloads fed so far, and (once disposed) how many the hook had accepted in all.
        self.fed = 0
        self.expected = 0
        #: How many of this hook's commands (creation, dispose) the driver has yet to answer.
        self.unanswered = 0
        #: The fiber that awaited the hook before that answer came.
        self.claimant: Any = None
        #: Fibers awaiting ``get_conflict()`` before the creation's answer came.
        self.askers: list[Any] | None = None

    @property
    def holder(self) -> str | None:
        """The run holding the token instead of this hook, if it conflicted."""
        return None if self.conflict is None else self.conflict.conflicting_run_id

    @property
    def draining(self) -> bool:
        """Disposed, but payloads it accepted before the dispose are still on their way."""
        return self.disposed and self.fed < self.expected


class HookHost(Protocol):
    """The machine, as its hook table uses it (passed in, never kept: no reference cycle)."""

    run_id: str
    held: bool
    _codec: Any
    _calls: int
    _recorded: Sequence[Event]
    _pos: int

    def _call(
        self,
        kind: str,
        description: str,
        matches: Callable[[Event], bool],
        emit: Callable[[], Any],
    ) -> Event | None: ...

    def _emit(self, command: Command) -> None: ...

    def _new_id(self, prefix: str) -> str: ...

    def _new_token(self, index: int) -> str: ...

    def _resume(self, fiber: Any, mode: int, value: Any) -> None: ...

    def _ready_first(self, fiber: Any, mode: int, value: Any) -> None: ...

    def _defer(self, fiber: Any, hook: HookState) -> None: ...

    def _payload(self, hook: HookState, event: Event) -> Any: ...


class Hooks:
    """A run's hooks: creation and its answer, payloads and waiters, dispose and its answer."""

    __slots__ = ("_live", "_unanswered", "changed", "count", "max_hooks")

    def __init__(self, max_hooks: int) -> None:
        self._live: dict[str, HookState] = {}
        #: Creations (``c:``) and disposes (``d:``) the driver has yet to answer, by hook id
        #: (made on first use: a resident machine seldom has one outstanding).
        self._unanswered: dict[str, HookState] | None = None
        #: Hooks whose buffer of untaken payloads changed since the driver last looked.
        self.changed: set[HookState] | None = None
        # The limit is enforced from the machine's own count, so replay meets it at the same
        # call: a run over it fails the same way every time.
        self.count = 0
        self.max_hooks = max_hooks

    @property
    def unanswered(self) -> bool:
        return bool(self._unanswered)

    # -- creation ------------------------------------------------------------------------------

    def create(
        self,
        m: HookHost,
        token: str | None,
        metadata: Any,
        webhook: dict[str, Any] | None,
        schema: str | None,
    ) -> HookState:
        if token is not None and (not isinstance(token, str) or not token):
            raise WorkflowDefinitionError(f"hook token must be a non-empty string, not {token!r}")
        if token is not None and len(token) > MAX_TOKEN_LENGTH:
            raise WorkflowDefinitionError(
                f"hook token is {len(token)} characters; the limit is {MAX_TOKEN_LENGTH}"
            )
        if self.count >= self.max_hooks:
            raise WorkflowDefinitionError(
                f"run {m.run_id} already has {self.count} live hooks; dispose some "
                "(hook.dispose() or `with hook:`) or raise Runtime(max_hooks_per_run=...)"
            )
        meta_tree = m._codec.to_tree(metadata, root="metadata")
        chosen = token is not None
        new: list[tuple[str, str]] = []

        def emit() -> None:
            hook_id = m._new_id("hook_")
            # The call's index is the same on every replay: a derived token then is too.
            tok = token if token is not None else m._new_token(m._calls)
            m._emit(CreateHook(hook_id, tok, chosen, meta_tree, webhook, schema))
            new.append((hook_id, tok))

        recorded = m._call(
            "webhook" if webhook is not None else "hook",
            f"token {token!r}" if chosen else "with a random token",
            lambda e: (
                e.type in (ev.HOOK_CREATED, ev.HOOK_CONFLICT)
                and bool(e.data.get("chosen")) == chosen
                and (not chosen or e.data.get("token") == token)
                and bool(e.data.get("webhook")) == (webhook is not None)
            ),
            emit,
        )
        if recorded is not None:
            assert recorded.correlation_id is not None
            hook_id, tok = recorded.correlation_id, str(recorded.data["token"])
        else:
            hook_id, tok = new[0]
        state = HookState(hook_id, tok, metadata, webhook)
        self._live[hook_id] = state
        self.count += 1
        if recorded is None:
            self._await_answer(m, state, "c:")
        elif recorded.type == ev.HOOK_CONFLICT:
            self._conflicted(state, str(recorded.data.get("holder")))
        return state

    def _await_answer(self, m: HookHost, hook: HookState, kind: str) -> None:
        hook.unanswered += 1
        if self._unanswered is None:
            self._unanswered = {}
        self._unanswered[kind + hook.hook_id] = hook
        m.held = True

    def _conflicted(self, hook: HookState, holder: str) -> None:
        """Another run holds the hook's token: awaiting the hook raises, now and on replay."""
        hook.conflict = HookConflictError(hook.token, holder)
        if not hook.disposed:
            hook.disposed = True
            self.count -= 1
        self._live.pop(hook.hook_id, None)

    def answer(self, m: HookHost, event: Event) -> None:
        """The driver's answer to a creation (``hook_created``/``hook_conflict``) or a dispose
        (``hook_disposed``); a fiber that awaited the hook meanwhile goes on first."""
        if self._unanswered is None:
            return
        kind = "d:" if event.type == ev.HOOK_DISPOSED else "c:"
        hook = self._unanswered.pop(kind + (event.correlation_id or ""), None)
        if not self._unanswered:
            self._unanswered = None  # one stays with every resident machine otherwise
            m.held = False
        if hook is None:
            return
        hook.unanswered -= 1
        if event.type == ev.HOOK_CONFLICT:
            self._conflicted(hook, str(event.data.get("holder")))
        if kind == "c:" and hook.askers:
            askers, hook.askers = hook.askers, None
            for asker in reversed(askers):  # each goes first: reversed keeps their order
                if not asker.finished:
                    asker.blocked_on = None
                    m._ready_first(asker, SEND, hook.holder)
        if event.type == ev.HOOK_DISPOSED:
            hook.expected = int(event.data.get("received", 0) or 0)
        claimant = hook.claimant
        if claimant is None or hook.unanswered:
            return  # nobody waits, or its dispose is still to be answered
        hook.claimant = None
        if not claimant.finished:
            # As it would have gone on had the answer been there when it awaited.
            outcome = self.next(m, claimant, hook)
            if outcome is not None:
                claimant.blocked_on = None
                m._ready_first(claimant, *outcome)

    # -- payloads ------------------------------------------------------------------------------

    def receive(self, m: HookHost, event: Event) -> None:
        """A durable payload: to the first waiter, else into the hook's buffer."""
        hook = self._live.get(event.correlation_id or "")
        if hook is None:
            return
        hook.fed += 1
        if hook.waiters:
            m._resume(hook.waiters.pop(0), SEND, m._payload(hook, event))
        else:
            if hook.buffer is None:
                hook.buffer = deque()
            hook.buffer.append(event)
            self._changed(hook)

    def next(self, m: HookHost, fiber: Any, hook: HookState) -> tuple[int, Any] | None:
        """``fiber`` awaits the hook: a payload, an error, ``DISPOSED``, or block (``None``)."""
        if hook.conflict is not None:
            return (THROW, hook.conflict)
        if hook.buffer:
            self._changed(hook)
            return (SEND, m._payload(hook, hook.buffer.popleft()))
        if hook.unanswered:
            # Whether it conflicts, or how much it drains, is not known yet: wait for the
            # answer, which comes before any other fiber runs (see ``answer``).
            hook.claimant = fiber
            fiber.blocked_on = ("claim", hook)
            return None
        if hook.disposed and not hook.draining:
            return (SEND, DISPOSED)
        hook.waiters.append(fiber)
        fiber.blocked_on = ("hook", hook)
        return None

    def conflict_of(self, fiber: Any, hook: HookState) -> tuple[int, Any] | None:
        """``await hook.get_conflict()``: the holding run's id or ``None``, once the creation
        is answered (block until then)."""
        if self._unanswered is not None and "c:" + hook.hook_id in self._unanswered:
            if hook.askers is None:
                hook.askers = []
            hook.askers.append(fiber)
            fiber.blocked_on = ("ask", hook)
            return None
        return (SEND, hook.holder)

    def withdraw(self, fiber: Any, hook: HookState) -> None:
        """A losing fiber stops waiting; the hook's payloads stay buffered for the next await."""
        if hook.askers is not None and fiber in hook.askers:
            hook.askers.remove(fiber)
        if hook.claimant is fiber:
            hook.claimant = None
        try:
            hook.waiters.remove(fiber)
        except ValueError:
            pass

    def release(self, fiber: Any, hook: HookState) -> tuple[int, Any] | None:
        """A waiter of a hook disposed since: released unless the hook still drains payloads
        it accepted before the dispose (known from the answer)."""
        if fiber.finished or hook.draining or fiber not in hook.waiters:
            return None
        hook.waiters.remove(fiber)
        fiber.blocked_on = None
        return (SEND, DISPOSED)

    def _changed(self, hook: HookState) -> None:
        if self.changed is None:
            self.changed = set()
        self.changed.add(hook)

    def take_changed(self) -> set[HookState]:
        changed, self.changed = self.changed, None
        return changed or set()

    # -- dispose -------------------------------------------------------------------------------

    def dispose(self, m: HookHost, hook: HookState) -> None:
        """Release a hook's token (idempotent)."""
        if hook.disposed:
            if hook.conflict is not None and self._disposed_next(m, hook):
                # Disposed live before its conflict was known (the claim went to a shared
                # database): that dispose is in the history, so replay makes it too.
                m._call("dispose", f"hook {hook.hook_id}", lambda e: True, lambda: None)
            return
        # The hook stays known: a payload accepted before the dispose (durable, acknowledged)
        # may still be on its way, and is buffered rather than dropped.
        hook.disposed = True
        self.count -= 1
        emitted: list[bool] = []

        def emit() -> None:
            m._emit(DisposeHook(hook.hook_id, hook.token))
            emitted.append(True)

        recorded = m._call(
            "dispose",
            f"hook {hook.hook_id}",
            lambda e: e.type == ev.HOOK_DISPOSED and e.correlation_id == hook.hook_id,
            emit,
        )
        # Payloads accepted before the dispose (in log order) may not have reached the machine
        # yet; the dispose records how many the hook had accepted, and the hook drains up to
        # that count before it reports itself disposed, on replay exactly as live.
        if recorded is not None:
            hook.expected = int(recorded.data.get("received", 0) or 0)
        elif emitted:
            self._await_answer(m, hook, "d:")
        # Its waiters are released in their place in the queue, once the count is known.
        for waiter in hook.waiters:
            m._defer(waiter, hook)

    @staticmethod
    def _disposed_next(m: HookHost, hook: HookState) -> bool:
        recorded = m._recorded
        pos = m._pos
        return (
            pos < len(recorded)
            and recorded[pos].type == ev.HOOK_DISPOSED
            and recorded[pos].correlation_id == hook.hook_id
        )
