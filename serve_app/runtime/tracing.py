"""OpenTelemetry traces: a span per HTTP request in the router, a child per backend
attempt, and spans in the replica, joined into one trace across the Ray handle call.

The context crosses the handle call as a W3C `traceparent` carrier (a plain dict), so
replicas on other nodes continue the router's trace. With the `none` exporter nothing is
set up and every span is OpenTelemetry's no-op. Span attributes never carry request text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from opentelemetry import propagate, trace
from pydantic import BaseModel, ConfigDict, Field

TRACER_NAME = "embedserve"
_setup_lock = threading.Lock()
_configured = False


class TracingConfig(BaseModel):
    """Where spans go: nowhere, the process's stdout, or an OTLP/HTTP collector."""

    model_config = ConfigDict(extra="forbid")

    exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces URL (default: the exporter's, localhost:4318)."
    )
    service_name: str = "embedserve"


def setup_tracing(config: TracingConfig) -> None:
    """Install a tracer provider for this process once (router or replica).

    Raises:
        RuntimeError: `otlp` is asked for and its exporter package is not installed.
    """
    global _configured
    if config.exporter == "none":
        return
    with _setup_lock:
        if _configured:
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}))
        provider.add_span_processor(BatchSpanProcessor(_exporter(config)))
        trace.set_tracer_provider(provider)
        _configured = True


def _exporter(config: TracingConfig) -> Any:
    if config.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise RuntimeError(
            "tracing exporter 'otlp' needs the OTLP exporter: "
            "pip install 'embedserve[otlp]' (opentelemetry-exporter-otlp-proto-http)"
        ) from None
    return (
        OTLPSpanExporter(endpoint=config.otlp_endpoint)
        if config.otlp_endpoint
        else (OTLPSpanExporter())
    )


def tracer() -> trace.Tracer:
    """embedserve's tracer (no-op until `setup_tracing` installs a provider)."""
    return trace.get_tracer(TRACER_NAME)


def current_context_carrier() -> dict[str, str]:
    """The current span's context as a carrier to send along with a handle call."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextmanager
def continued_span(
    name: str, carrier: dict[str, str] | None, attributes: dict[str, Any]
) -> Iterator[trace.Span]:
    """A span continuing the trace of a carrier received from another process."""
    context = propagate.extract(carrier or {})
    with tracer().start_as_current_span(name, context=context, attributes=attributes) as span:
        yield span


@contextmanager
def batch_span(
    carriers: Sequence[dict[str, str] | None], attributes: dict[str, Any]
) -> Iterator[trace.Span]:
    """A span for one batch: a child of its first request, linked to all of them."""
    contexts = [propagate.extract(carrier or {}) for carrier in carriers]
    links = [
        trace.Link(span_context)
        for context in contexts
        if (span_context := trace.get_current_span(context).get_span_context()).is_valid
    ]
    parent = contexts[0] if contexts else None
    with tracer().start_as_current_span(
        "replica.batch", context=parent, links=links, attributes=attributes
    ) as span:
        yield span
