"""Tracing set-up from the standard ``OTEL_*`` variables, and trace-context hand-over.

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set: spans go to that
  collector over OTLP/HTTP (the exporter reads the other ``OTEL_EXPORTER_OTLP_*`` itself).
- ``OTEL_TRACES_EXPORTER=console``: spans are printed (development).
- neither: spans get ids (which still correlate logs) but are not recorded, which is cheap;
  child spans that would only be recorded (``detail_span``) are not made at all.
- ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` choose the sampler when exporting.

The context travels from the ingress to the worker inside the queued job as a W3C
``traceparent``, so one trace covers request → render → SMTP.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

if TYPE_CHECKING:
    from .config import TelemetrySettings

TRACER_NAME = "email-service"
_provider: TracerProvider | None = None
_exporting = False


def configure_tracing(component: str, settings: TelemetrySettings) -> TracerProvider:
    """Install the process's tracer provider once; ``component`` is api, worker or operator."""
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create({
        "service.name": settings.service_name,
        "service.component": component,
    })
    exporters = set(settings.traces_exporter)
    endpoint = settings.otlp_traces_endpoint or settings.otlp_endpoint
    processors: list[SpanProcessor] = []
    if "otlp" in exporters and endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    if "console" in exporters:
        processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
    # Exporting: the sampler the OTEL_TRACES_SAMPLER variables choose (parent-based, always on
    # by default). Exporting nowhere: spans still get ids, which correlate the logs, but are not
    # recorded; a recorded span tree cost about a tenth of a worker's CPU per email.
    provider = TracerProvider(resource=resource, sampler=None if processors else ALWAYS_OFF)
    global _exporting
    _exporting = bool(processors)
    for processor in processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def exporting() -> bool:
    """Whether spans are exported: an exporter is configured (see the module's docstring)."""
    return _exporting


def shutdown_tracing() -> None:
    """Flush spans still buffered (process shutdown)."""
    if _provider is not None:
        _provider.shutdown()


@functools.cache
def tracer() -> trace.Tracer:
    # Looked up once (get_tracer is not cheap). Before configure_tracing it returns a proxy
    # that follows the provider set later, so caching early is safe.
    return trace.get_tracer(TRACER_NAME)


def detail_span(name: str, **kwargs: Any) -> contextlib.AbstractContextManager[trace.Span]:
    """A child span that is only worth its cost when spans are exported.

    Without an exporter a span is never recorded and only its ids are of use; a child's ids
    correlate nothing its parent's do not, yet creating one still costs ids, a sampler call and
    a context attach and detach. So children (authenticate, validate, render, transport.send)
    are made only when exporting; the spans that carry a trace across processes always are.
    """
    if not _exporting:
        return contextlib.nullcontext(trace.INVALID_SPAN)
    return tracer().start_as_current_span(name, **kwargs)


def inject_context() -> dict[str, str]:
    """The current trace context as a carrier to put inside a queued job."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: Mapping[str, Any] | None) -> Context:
    return propagate.extract(dict(carrier or {}))


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the current span, when there is one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
