"""``GET /metrics``: the runtime's Prometheus metrics, in the text format.

Open, like ``/healthz``, and on purpose: it holds counts and latencies only (no run id, token,
payload or workflow name; labels are fixed outcome names), while the only secret the server has
(the resume secret) also starts, resumes and cancels runs, and a monitoring system should not
hold that. Keep it private the way ``/healthz`` is kept private: at the proxy or the network.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint
from quart import Response as QuartResponse

from ..runtime.runtime import Runtime

__all__ = ["add_metrics_route"]


def add_metrics_route(bp: Blueprint, runtime: Runtime) -> None:
    """Serve ``runtime``'s metrics registry at ``GET /metrics``."""

    async def metrics() -> QuartResponse:
        # Collecting reads the state in memory (and no file): quick enough for the event loop.
        body = generate_latest(runtime.metrics.registry)
        return QuartResponse(body, status=200, content_type=CONTENT_TYPE_LATEST)

    bp.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])
