"""The API's Prometheus metrics, labelled by route.

BentoML's own traffic metrics label every series with the path as requested, in a middleware outside
the service's own: each path anyone makes up (``/probe-1``, ``/probe-2``, ...) adds series to every
worker's store for as long as the server runs, a store that an unauthenticated client can grow
without limit. Its metrics are switched off in the service's configuration and counted here instead,
with one label value per route of the API and ``other`` for everything else: the number of series is
fixed whatever the requests.

The metric names and the ``endpoint``, ``http_response_code`` and ``service_name`` labels are
BentoML's (``bentoml_service_request_total``, ``..._request_duration_seconds``,
``..._request_in_progress``; its ``service_version`` and ``runner_name`` labels are left out), so
dashboards that select on them keep working. Under ``bentoml serve`` each
worker writes its values to ``PROMETHEUS_MULTIPROC_DIR`` (BentoML sets it for its workers) and
``GET /metrics`` adds them up across workers, as prometheus_client's multiprocess mode does.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

NAMESPACE = "bentoml_service"
OTHER = "other"
SERVICE = "valuecast"
# Request durations up to the service's 120 s timeout.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

REQUESTS = Counter(
    "request",
    "HTTP requests answered, per route and status code",
    ["endpoint", "http_response_code", "service_name"],
    namespace=NAMESPACE,
)
DURATION = Histogram(
    "request_duration_seconds",
    "Time from a request's arrival to the end of its answer, per route and status code",
    ["endpoint", "http_response_code", "service_name"],
    namespace=NAMESPACE,
    buckets=BUCKETS,
)
IN_PROGRESS = Gauge(
    "request_in_progress",
    "Requests being answered now, per route",
    ["endpoint", "service_name"],
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)


class RouteMetrics:
    """ASGI middleware counting each HTTP request under its route (one of ``routes``) or ``other``,
    with the status it was answered with (504 when BentoML's timeout cancelled it before any answer).
    ``GET /metrics`` itself is not counted, as in BentoML."""

    def __init__(self, app: Any, routes: tuple[str, ...]) -> None:
        self.app = app
        self.routes = frozenset(routes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope.get("type") != "http" or path == "/metrics":
            await self.app(scope, receive, send)
            return
        route = path if path in self.routes else OTHER
        started = time.perf_counter()
        status = 0

        def count(code: str) -> None:
            REQUESTS.labels(route, code, SERVICE).inc()
            DURATION.labels(route, code, SERVICE).observe(time.perf_counter() - started)

        async def counted(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                count(str(status))
            await send(message)

        try:
            with IN_PROGRESS.labels(route, SERVICE).track_inprogress():
                await self.app(scope, receive, counted)
        except asyncio.CancelledError:
            # BentoML's timeout (outside this middleware) cancels a request it gives up on and answers 504
            if status == 0:
                count("504")
            raise


def exposition() -> tuple[bytes, str]:
    """The text ``GET /metrics`` answers and its content type: all workers' values under
    ``bentoml serve``, this process's otherwise."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        from prometheus_client import REGISTRY

        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
