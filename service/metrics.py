"""Ingress metrics for Prometheus, served at ``/metrics``.

- ``email_http_requests_total{route,method,status}`` and ``email_http_request_seconds{route}``
- ``email_rejections_total{reason}``: refused requests by error code (``invalid_request``, …)
- ``email_enqueue_failures_total{reason}``: sends not queued (``redis``, ``queue_full``)
- ``email_accepted_total{source}``: messages accepted, by entry point
"""

from __future__ import annotations

import os
import time
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class IngressMetrics:
    """The ingress's collectors, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("email_http_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "email_http_request_seconds", "HTTP request latency by route", ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry)
        self.rejections = Counter("email_rejections", "Requests refused, by reason",
                                  ["reason"], registry=self.registry)
        self.enqueue_failures = Counter("email_enqueue_failures",
                                        "Sends that could not be queued, by reason", ["reason"],
                                        registry=self.registry)
        self.accepted = Counter("email_accepted", "Messages accepted and queued, by source",
                                ["source"], registry=self.registry)

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # One of several ingress processes (service/processes.py): the sum over all.
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(merged))
        return bytes(generate_latest(self.registry))


class MetricsMiddleware:
    """Counts and times every request under its route template (low cardinality), and names
    the request's server span after the route."""

    def __init__(self, app: ASGIApp, metrics: IngressMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            span = trace.get_current_span()
            if span.is_recording():
                span.update_name(f"{scope['method']} {route}")
                span.set_attribute("http.route", route)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


async def metrics_endpoint(request: Request) -> Response:
    metrics: IngressMetrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def count_rejection(request: Request, reason: str) -> None:
    metrics: Any = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.rejections.labels(reason).inc()
