"""One local Ray and Serve for this tier, stopped after its last test (so another tier's
Ray can start before or after it in the same pytest process); each module deploys its
own app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from embedserve.config import load_config, parse_config
from embedserve.runtime.ingress import THROUGHPUT_MODE_ENV, free_port, ray_processes_env


@pytest.fixture(scope="package")
def serve_url() -> Iterator[str]:
    """A local Ray (4 logical CPUs, so several small replicas fit on 2 cores) with Serve
    in the throughput-optimized mode `embedserve serve` runs it in (gRPC between the
    deployments, user code on the replicas' event loops).

    Requests go through Serve's proxy: a router redeployed in place starts before the old
    one stops, and with its direct-ingress port pinned as `serve` pins it the new one
    could not bind it (tests/integration/test_cli_serve.py tests direct ingress)."""
    import ray
    from ray import serve

    port = free_port()
    # address="local": a Ray of this session's own, even if `ray start` runs on the machine.
    with ray_processes_env(THROUGHPUT_MODE_ENV):
        ray.init(
            address="local",
            num_cpus=4,
            include_dashboard=False,
            namespace="embedserve-tests",
            _metrics_export_port=METRICS_PORT,
        )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


METRICS_PORT = free_port()


def ray_metrics() -> str:
    """This session's Ray metrics in the Prometheus text format (what the dashboard and
    Prometheus scrape)."""
    return httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).text


Deploy = Callable[[dict[str, Any] | None], str]


@pytest.fixture(scope="module")
def deploy(serve_url: str) -> Iterator[Deploy]:
    """Deploy a config (None: the bundled default) as the `embedserve` app; returns the URL.

    The app is deleted when the module's tests are done.
    """
    from ray import serve

    from embedserve.deployments.app import APP_NAME, build_app

    def _deploy(config: dict[str, Any] | None) -> str:
        parsed = load_config(None) if config is None else parse_config(config)
        serve.run(build_app(parsed), name=APP_NAME, route_prefix="/")
        return serve_url

    yield _deploy
    serve.delete(APP_NAME)


def backend_handle(backend: str) -> Any:
    """The deployment handle of a backend of the running app."""
    from ray import serve

    from embedserve.deployments.app import APP_NAME

    return serve.get_deployment_handle(backend, app_name=APP_NAME)


def embed(url: str, **body: Any) -> httpx.Response:
    """POST /v1/embeddings."""
    return httpx.post(f"{url}/v1/embeddings", json=body, timeout=120)


def hash_backend(**options: Any) -> dict[str, Any]:
    """A small `hash` backend config."""
    return {"kind": "hash", "options": options, "resources": {"num_cpus": 0.1}}
