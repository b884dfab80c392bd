"""A runtime's Prometheus metrics, in a registry of its own (several runtimes share a process).

What the hot path pays is kept to a few dictionary and lock operations:

- run counters are counts of durable events by type, one dict update per event in the writer's
  callback, turned into counters only when scraped;
- gauges (live and parked runs, live hooks, mailbox and log backlog, log size) are read from the state when
  scraped, so nothing is kept up to date between scrapes;
- a resume observes its latency and outcome once, after it returned or raised; the writer
  observes each sync's duration from its thread (``prometheus_client`` locks its values).

Counters count what this process did since it started (a restart begins at zero, as Prometheus
expects of counters); gauges describe the state now, recovered runs included.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import (
    HookNotFoundError,
    HookPayloadError,
    IdempotencyKeyConflictError,
    OverloadedError,
    SerializationError,
    WebhookSignatureError,
    WorkflowDefinitionError,
)
from .core import events as ev
from .core.events import Event
from .journal import Journal
from .log.file_log import FileLog
from .state import State

__all__ = ["RESUME_OUTCOMES", "WEBHOOK_OUTCOMES", "RuntimeMetrics"]

#: Outcomes of ``resume_hook`` (the ``outcome`` label of ``actorflow_resumes_total``).
RESUME_OUTCOMES = ("delivered", "not_found", "invalid", "conflict", "overloaded", "error")
#: Outcomes of ``resume_webhook`` (``actorflow_webhook_deliveries_total``).
WEBHOOK_OUTCOMES = ("accepted", "not_found", "rejected", "invalid", "overloaded", "error")

# Resumes are acknowledged after an fsync: about a millisecond on a local disk, more on a
# network disk or PostgreSQL; the buckets span 0.25 ms to 10 s.
_RESUME_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5, 10)
_SYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5)

_RUN_COUNTERS = (
    ("actorflow_runs_started", "Runs started (run_created durable) by this process.",
     ev.RUN_CREATED),
    ("actorflow_runs_completed", "Runs that completed (run_completed durable).", ev.RUN_COMPLETED),
    ("actorflow_runs_failed", "Runs that failed (run_failed durable).", ev.RUN_FAILED),
    ("actorflow_runs_cancelled", "Runs cancelled (run_cancelled durable).", ev.RUN_CANCELLED),
)  # fmt: skip


def _outcome(exc: BaseException, *, webhook: bool) -> str:
    """The label of a failed delivery: what the caller can do about it."""
    if isinstance(exc, HookNotFoundError):
        return "not_found"
    if isinstance(exc, WebhookSignatureError):
        return "rejected"
    if isinstance(exc, IdempotencyKeyConflictError):
        return "invalid" if webhook else "conflict"
    if isinstance(exc, HookPayloadError | SerializationError | WorkflowDefinitionError):
        return "invalid"
    if isinstance(exc, OverloadedError):
        return "overloaded"
    return "error"


class _Timed:
    """Times one delivery and counts its outcome (``with metrics.resume(): ...``)."""

    __slots__ = ("_outcomes", "_latency", "_webhook", "_began")

    def __init__(
        self, outcomes: dict[str, Counter], latency: Histogram | None, webhook: bool
    ) -> None:
        self._outcomes = outcomes
        self._latency = latency
        self._webhook = webhook
        self._began = 0.0

    def __enter__(self) -> None:
        self._began = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            if self._latency is not None:
                self._latency.observe(time.perf_counter() - self._began)
            self._outcomes["accepted" if self._webhook else "delivered"].inc()
        elif isinstance(exc, Exception):  # cancellation is nobody's outcome
            self._outcomes[_outcome(exc, webhook=self._webhook)].inc()


class RuntimeMetrics:
    """The metrics of one runtime; ``registry`` is what ``GET /metrics`` exposes."""

    def __init__(self, state: State, journal: Journal, mailbox_backlog: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._durable: dict[str, int] = {}
        resumes = Counter(
            "actorflow_resumes",
            "resume_hook calls by outcome (delivered: durable and acknowledged).",
            ["outcome"],
            registry=self.registry,
        )
        webhooks = Counter(
            "actorflow_webhook_deliveries",
            "resume_webhook calls by outcome (accepted: durable and answered).",
            ["outcome"],
            registry=self.registry,
        )
        # Children bound once: a labelled lookup per resume would cost more than the count.
        self._resumes = {outcome: resumes.labels(outcome) for outcome in RESUME_OUTCOMES}
        self._webhooks = {outcome: webhooks.labels(outcome) for outcome in WEBHOOK_OUTCOMES}
        self._resume_latency = Histogram(
            "actorflow_resume_ack_seconds",
            "From resume_hook's call to its acknowledgement (the payload durable).",
            buckets=_RESUME_BUCKETS,
            registry=self.registry,
        )
        self._sync_latency = Histogram(
            "actorflow_log_sync_seconds",
            "Duration of each sync of the log: an fsync (file log) or a commit (PostgreSQL).",
            buckets=_SYNC_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(state, journal, self._durable, mailbox_backlog))
        journal.on_durable_batch = self._count_durable
        journal.on_sync = self._sync_latency.observe

    def resume(self) -> _Timed:
        """Context manager around one ``resume_hook``: its latency and outcome."""
        return _Timed(self._resumes, self._resume_latency, webhook=False)

    def webhook(self) -> _Timed:
        """Context manager around one ``resume_webhook``: its outcome (its latency includes
        the workflow's own answer for manual responses, so it is not mixed with resumes')."""
        return _Timed(self._webhooks, None, webhook=True)

    def _count_durable(self, events: Sequence[Event]) -> None:
        counts = self._durable
        for event in events:
            kind = event.type
            counts[kind] = counts.get(kind, 0) + 1


class _StateCollector(Collector):
    """What is read when scraped: the run counters and the gauges."""

    def __init__(
        self,
        state: State,
        journal: Journal,
        durable: dict[str, int],
        mailbox_backlog: Callable[[], int],
    ) -> None:
        self._state = state
        self._journal = journal
        self._durable = durable
        self._mailbox_backlog = mailbox_backlog

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the names are fixed, but the log size is absent on PostgreSQL

    def collect(self) -> Iterator[Metric]:
        for name, doc, kind in _RUN_COUNTERS:
            yield CounterMetricFamily(name, doc, value=self._durable.get(kind, 0))
        state = self._state
        # A scan of the runs: a scrape every few seconds over a million runs costs tens of ms.
        live = parked = 0
        for run in state.runs.values():
            if not run.finished:
                live += 1
                if run.actor is not None and run.actor.parked:
                    parked += 1
        yield GaugeMetricFamily("actorflow_live_runs", "Runs not yet ended.", value=live)
        yield GaugeMetricFamily(
            "actorflow_parked_runs",
            "Live runs parked: their history no longer replays against the code (see "
            "'Deploying changes'); retried at start and by retry_parked.",
            value=parked,
        )
        yield GaugeMetricFamily(
            "actorflow_live_hooks", "Live hooks and webhooks (their tokens resolve).",
            value=len(state.tokens),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "actorflow_mailbox_backlog", "Durable messages waiting in runs' mailboxes.",
            value=self._mailbox_backlog(),
        )  # fmt: skip
        health = self._journal.health()
        yield GaugeMetricFamily(
            "actorflow_log_backlog", "Events submitted to the log and not yet durable.",
            value=health.backlog,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "actorflow_log_events", "Events in the log (recovered at start, and written since).",
            value=state.events,
        )  # fmt: skip
        store = self._journal.store
        if isinstance(store, FileLog):
            yield GaugeMetricFamily(
                "actorflow_log_bytes", "Bytes of the file log's segments.",
                value=store.size_bytes,
            )  # fmt: skip
