"""A runtime's Prometheus metrics, in a registry of its own (several runtimes share a process).

What the hot path pays is kept to a few dictionary and lock operations:

- run counters are counts of durable events by type, one dict update per event in the writer's
  callback, turned into counters only when scraped;
- gauges (live and parked runs, live hooks, mailbox and log backlog, log size) are read from the state when
  scraped, so nothing is kept up to date between scrapes;
- a resume observes its latency and outcome once, after it returned or raised, into plain
  numbers (``_Deliveries``: the event loop's thread is their only writer, so no lock; a
  ``prometheus_client`` counter and histogram took about 2 us of a resume's CPU under load);
  the writer observes each sync's duration from its thread (``prometheus_client`` locks its
  values, once per batch).

Counters count what this process did since it started (a restart begins at zero, as Prometheus
expects of counters); gauges describe the state now, recovered runs included.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

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


class _Deliveries:
    """Outcome counts of one kind of delivery, and (``bounds`` given) a histogram of the
    acknowledged ones' latency: plain numbers, turned into metric families when scraped."""

    __slots__ = ("counts", "bounds", "buckets", "total", "created")

    def __init__(self, outcomes: Sequence[str], bounds: Sequence[float] = ()) -> None:
        self.counts = dict.fromkeys(outcomes, 0)
        self.bounds = tuple(bounds)  # upper bounds, increasing; the last bucket is +Inf
        self.buckets = [0] * (len(self.bounds) + 1)
        self.total = 0.0  # seconds, summed over the observed deliveries
        self.created = time.time()

    def observe(self, seconds: float) -> None:
        # A bucket counts the values at most its bound ("le"), hence bisect_left.
        self.buckets[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def counter(self, name: str, doc: str) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["outcome"])
        for outcome, count in self.counts.items():
            family.add_metric([outcome], count, created=self.created)
        return family

    def histogram(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            cumulative += count
            # The "le" label as prometheus_client writes it: 0.00025, 1.0, +Inf.
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        family = HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.total)
        family.samples.append(Sample(f"{name}_created", {}, self.created))
        return family


class _Timed:
    """Times one delivery and counts its outcome (``with metrics.webhook(): ...``)."""

    __slots__ = ("_deliveries", "_timed", "_webhook", "_began")

    def __init__(self, deliveries: _Deliveries, timed: bool, webhook: bool) -> None:
        self._deliveries = deliveries
        self._timed = timed
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
        deliveries = self._deliveries
        if exc is None:
            if self._timed:
                deliveries.observe(time.perf_counter() - self._began)
            deliveries.counts["accepted" if self._webhook else "delivered"] += 1
        elif isinstance(exc, Exception):  # cancellation is nobody's outcome
            deliveries.counts[_outcome(exc, webhook=self._webhook)] += 1


class RuntimeMetrics:
    """The metrics of one runtime; ``registry`` is what ``GET /metrics`` exposes."""

    def __init__(
        self,
        state: State,
        journal: Journal,
        mailbox_backlog: Callable[[], int],
        routing: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._durable: dict[str, int] = {}
        self._resumes = _Deliveries(RESUME_OUTCOMES, _RESUME_BUCKETS)
        self._webhooks = _Deliveries(WEBHOOK_OUTCOMES)
        self.registry.register(_DeliveryCollector(self._resumes, self._webhooks))
        self._sync_latency = Histogram(
            "actorflow_log_sync_seconds",
            "Duration of each sync of the log: an fsync (file log) or a commit (PostgreSQL).",
            buckets=_SYNC_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(state, journal, self._durable, mailbox_backlog))
        self.registry.register(_RoutingCollector(routing))
        journal.on_durable_batch = self._count_durable
        journal.on_sync = self._sync_latency.observe

    def resumed(self, seconds: float) -> None:
        """A ``resume_hook`` was acknowledged after ``seconds`` (called, not a context manager
        like ``webhook()``: no object per call on the hot path)."""
        resumes = self._resumes
        resumes.observe(seconds)
        resumes.counts["delivered"] += 1

    def resume_failed(self, exc: Exception) -> None:
        """A ``resume_hook`` raised ``exc``: count its outcome."""
        self._resumes.counts[_outcome(exc, webhook=False)] += 1

    def webhook(self) -> _Timed:
        """Context manager around one ``resume_webhook``: its outcome (its latency includes
        the workflow's own answer for manual responses, so it is not mixed with resumes')."""
        return _Timed(self._webhooks, timed=False, webhook=True)

    def _count_durable(self, events: Sequence[Event]) -> None:
        counts = self._durable
        for event in events:
            kind = event.type
            counts[kind] = counts.get(kind, 0) + 1


class _DeliveryCollector(Collector):
    """The outcome counters of resumes and webhook deliveries, and the resumes' latency."""

    def __init__(self, resumes: _Deliveries, webhooks: _Deliveries) -> None:
        self._resumes = resumes
        self._webhooks = webhooks

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield self._resumes.counter(
            "actorflow_resumes",
            "resume_hook calls by outcome (delivered: durable and acknowledged).",
        )
        yield self._webhooks.counter(
            "actorflow_webhook_deliveries",
            "resume_webhook calls by outcome (accepted: durable and answered).",
        )
        yield self._resumes.histogram(
            "actorflow_resume_ack_seconds",
            "From resume_hook's call to its acknowledgement (the payload durable).",
        )


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
        yield CounterMetricFamily(
            "actorflow_log_sync_overruns",
            "Small batches whose write and fsync outlasted the event loop's blocked wait for "
            "them (1 ms): a slow or stalled disk.",
            value=self._journal.sync_overruns,
        )
        store = self._journal.store
        if isinstance(store, FileLog):
            yield GaugeMetricFamily(
                "actorflow_log_bytes",
                "Bytes of the file log's segments up to their last record (the space reserved "
                "ahead of the records, up to about a megabyte, is not counted).",
                value=store.size_bytes,
            )  # fmt: skip


class _RoutingCollector(Collector):
    """Deliveries between the nodes of a shared PostgreSQL log (nothing for a lone runtime)."""

    def __init__(self, routing: Callable[[], Mapping[str, int]]) -> None:
        self._routing = routing  # read when scraped: the ownership is chosen at open

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        counts = self._routing()
        if not counts:
            return
        yield _by_path(
            "actorflow_routed_deliveries",
            "Deliveries to runs other nodes own (and keyed ones, checked by the shared inbox), "
            "by path: forwarded to the owner and answered, or committed to the inbox.",
            counts["sent_forwarded"],
            counts["sent_inbox"],
        )
        yield CounterMetricFamily(
            "actorflow_routed_forward_fallbacks",
            "Forwards the owner did not answer (no link, a broken link, no reply in time, the "
            "run moved), sent through the inbox instead (also counted there).",
            value=counts["sent_fell_back"],
        )
        yield _by_path(
            "actorflow_taken_deliveries",
            "What other nodes sent to runs owned here, by path: forwarded deliveries taken "
            "and answered, inbox records appended.",
            counts["taken_forwarded"],
            counts["taken_inbox"],
        )
        yield CounterMetricFamily(
            "actorflow_peer_links_refused",
            "Peer links refused: a failed handshake (wrong key) or a broken protocol.",
            value=counts["links_refused"],
        )
        yield CounterMetricFamily(
            "actorflow_runs_adopted",
            "Runs this node took over from nodes whose lease expired.",
            value=counts["adopted"],
        )


def _by_path(name: str, doc: str, forwarded: int, inbox: int) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["path"])
    family.add_metric(["forwarded"], forwarded)
    family.add_metric(["inbox"], inbox)
    return family
