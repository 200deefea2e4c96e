"""Spans of one request form one trace: router request -> backend attempt -> replica.

The fake handles continue the trace from the carrier exactly as BackendDeployment does;
the Ray transport of the carrier is covered by tests/integration/test_observability.py.
"""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from embedserve.runtime.tracing import batch_span, current_context_carrier, tracer
from tests.unit.fakes import SPACE_A, A, RaisingHandle, embed, make_app, make_config

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(autouse=True)
def _in_memory_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans go to `_EXPORTER` during each test, whatever provider the process has.

    OpenTelemetry lets a process set its global provider once (later calls are ignored
    with a warning), and FastAPI or Ray Serve may have set one before this module runs:
    so the global is swapped for the test and put back, instead of set.
    """
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    _EXPORTER.clear()
    return _EXPORTER


def by_name(exporter: InMemorySpanExporter) -> dict[str, list]:
    found: dict[str, list] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def test_one_request_is_one_trace_across_router_and_replica(spans) -> None:
    app, _ = make_app(make_config({"hash-a": A}, {"mini": {"chain": ["hash-a"]}}))
    assert embed(app, model="mini", input="a secret text").status_code == 200
    found = by_name(spans)
    [request], [attempt], [replica] = (
        found["embeddings"],
        found["backend_attempt"],
        found["replica.embed"],
    )
    assert request.context.trace_id == attempt.context.trace_id == replica.context.trace_id
    assert attempt.parent.span_id == request.context.span_id
    assert replica.parent.span_id == attempt.context.span_id
    assert attempt.attributes["embedserve.space_id"] == SPACE_A
    assert request.attributes["embedserve.serving.fallback"] is False
    texts = [str(v) for span in spans.get_finished_spans() for v in span.attributes.values()]
    assert not any("secret" in text for text in texts), "request text in a span"


def test_each_backend_attempt_is_a_child_span_with_its_outcome(spans) -> None:
    config = make_config({"first": A, "second": A}, {"mini": {"chain": ["first", "second"]}})
    app, _ = make_app(config, {"first": RaisingHandle})
    assert embed(app, model="mini", input="text").json()["fallback"] is True
    attempts = by_name(spans)["backend_attempt"]
    assert [a.attributes["embedserve.backend"] for a in attempts] == ["first", "second"]
    assert not attempts[0].status.is_ok and attempts[1].status.is_ok
    [request] = by_name(spans)["embeddings"]
    assert request.attributes["embedserve.backend"] == "second"
    assert request.attributes["embedserve.serving.fallback"] is True


def test_an_error_response_is_recorded_on_the_request_span(spans) -> None:
    app, _ = make_app(make_config({"hash-a": A}, {"mini": {"chain": ["hash-a"]}}))
    assert embed(app, model="nope", input="text").status_code == 404
    [request] = by_name(spans)["embeddings"]
    assert request.attributes["http.status_code"] == 404
    assert request.attributes["embedserve.model"] == "(unknown)"


def test_a_batch_span_continues_its_first_request_and_links_all(spans) -> None:
    carriers = []
    for name in ("request-1", "request-2"):
        with tracer().start_as_current_span(name):
            carriers.append(current_context_carrier())
    with batch_span(carriers, {"embedserve.items": 2}):
        pass
    found = by_name(spans)
    [batch], [first], [second] = found["replica.batch"], found["request-1"], found["request-2"]
    assert batch.parent.span_id == first.context.span_id
    assert {link.context.span_id for link in batch.links} == {
        first.context.span_id,
        second.context.span_id,
    }
