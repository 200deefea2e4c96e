"""Metrics in Ray's metrics export and one OpenTelemetry trace across router and replica.

Metrics are scraped from the node's Prometheus endpoint, as the Ray dashboard and
Prometheus read them. Traces go over OTLP/HTTP to a real local collector (an HTTP server
in this test that decodes the protobuf requests), from both the router's and the
replica's processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.integration.conftest import embed, free_port, hash_backend, ray_metrics

pytestmark = pytest.mark.integration

DOCUMENTED_METRICS = [
    "ray_embedserve_requests_total",
    "ray_embedserve_items_total",
    "ray_embedserve_tokens_total",
    "ray_embedserve_request_latency_ms_bucket",
    "ray_embedserve_fallbacks_total",
    "ray_embedserve_backend_failures_total",
    "ray_embedserve_batch_size_bucket",
    "ray_embedserve_batch_tokens_bucket",
    "ray_embedserve_queue_wait_ms_bucket",
    "ray_embedserve_batch_latency_ms_bucket",
    "ray_embedserve_canary_checks_total",
]


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP traces endpoint keeping every span it receives."""

    def __init__(self) -> None:
        self.spans: list = []
        super().__init__(("127.0.0.1", free_port()), _CollectorHandler)


class _CollectorHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.server.spans.extend(scope_spans.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    server = Collector()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def url(deploy, collector: Collector) -> str:
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
    raising = {"kind": "faulty-hash", "options": {"fault": "raise"}, "resources": {"num_cpus": 0.1}}
    return deploy(
        {
            "server": {"tracing": {"exporter": "otlp", "otlp_endpoint": endpoint}},
            "backends": {"raising": raising, "hash": hash_backend()},
            "models": {"m": {"chain": ["raising", "hash"]}},
        }
    )


def wait_for(condition, timeout_s: float = 45):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(1)
    return condition()


def test_metrics_appear_in_rays_export_with_their_tags(url: str) -> None:
    for i in range(3):
        assert embed(url, model="m", input=[f"text {i}", "more"]).status_code == 200
    assert embed(url, model="unknown-model", input="x").status_code == 404

    def scraped() -> str | None:
        text = ray_metrics()
        return text if all(name in text for name in DOCUMENTED_METRICS) else None

    text = wait_for(scraped)
    missing = [name for name in DOCUMENTED_METRICS if name not in (text or ray_metrics())]
    assert not missing, missing
    lines = text.splitlines()
    assert any(
        line.startswith("ray_embedserve_requests_total")
        and 'backend="hash"' in line
        and 'model="m"' in line
        and 'status="200"' in line
        for line in lines
    )
    assert any('model="(unknown)"' in line and 'status="404"' in line for line in lines)
    assert any(
        line.startswith("ray_embedserve_fallbacks_total") and 'reason="error"' in line
        for line in lines
    )


def test_one_request_is_one_trace_across_router_and_replica(url: str, collector) -> None:
    collector.spans.clear()
    assert embed(url, model="m", input="trace me").status_code == 200

    def request_trace() -> dict | None:
        requests = [s for s in collector.spans if s.name == "embeddings"]
        if not requests:
            return None
        trace_id = requests[-1].trace_id
        names = {s.name: s for s in collector.spans if s.trace_id == trace_id}
        return names if {"replica.embed", "replica.batch"} <= set(names) else None

    spans = wait_for(request_trace)
    assert spans, [s.name for s in collector.spans]
    attempts = [s for s in collector.spans if s.name == "backend_attempt"]
    assert {a.trace_id for a in attempts} >= {spans["embeddings"].trace_id}
    assert spans["replica.embed"].parent_span_id in {a.span_id for a in attempts}
