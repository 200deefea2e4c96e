"""Placement and autoscaling on a three-node cluster: a CPU-only head, a node with one
(logical) GPU, and a CPU node that offers the `cpu_pool` custom resource.

Apps are deployed from `embedserve build-config` output, so these tests also show that
the generated Serve config deploys and serves.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from embedserve.deployments.app import APP_NAME
from embedserve.deployments.status import collect_status
from tests.cluster.conftest import (
    cli_status,
    deployment_nodes,
    expected_vectors,
    local_cluster,
    placed_hash_backend,
    running_replicas,
    serve_deploy,
    vectors_of,
    wait_for,
)
from tests.integration.conftest import embed, free_port
from tests.texts import paragraphs

pytestmark = pytest.mark.cluster

CPU_ONLY = {"num_cpus": 0.1, "resources": {"cpu_pool": 0.01}}


@dataclass(frozen=True)
class Nodes:
    """The node ids of the module's cluster by role, its address, Serve's HTTP port and
    the dashboard's URL."""

    head: str
    gpu: str
    cpu: str
    address: str
    port: int
    dashboard: str


@pytest.fixture(scope="module")
def nodes() -> Iterator[Nodes]:
    workers = [
        {"num_cpus": 2, "num_gpus": 1},
        {"num_cpus": 2, "resources": {"cpu_pool": 1}},
    ]
    # With the dashboard: its REST API is what `serve deploy` and the dashboard UI read.
    head = {"num_cpus": 2, "include_dashboard": True, "dashboard_port": free_port()}
    with local_cluster(head=head, workers=workers) as (cluster, (gpu, cpu)):
        yield Nodes(
            cluster.head_node.node_id,
            gpu.node_id,
            cpu.node_id,
            cluster.address,
            free_port(),
            f"http://{cluster.webui_url}",
        )


def gpus_left(node_id: str) -> float:
    """Unreserved GPUs on one node."""
    import ray

    per_node = ray._private.state.available_resources_per_node()
    return per_node.get(node_id, {}).get("GPU", 0.0)


def assert_serves(url: str, model: str, **options: Any) -> None:
    texts = paragraphs(6)
    response = embed(url, model=model, input=texts)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(vectors_of(response), expected_vectors(texts, **options), atol=1e-6)


def test_quarter_gpu_replicas_pack_one_gpu_node_and_cpu_backends_stay_off_it(
    nodes: Nodes,
) -> None:
    replicas = {"min_replicas": 4, "max_replicas": 4}
    config = {
        "server": {"router_num_cpus": 0.1},
        "backends": {
            "gpu": placed_hash_backend({"num_cpus": 0.1, "num_gpus": 0.25}, autoscaling=replicas),
            "cpu": placed_hash_backend(
                CPU_ONLY, autoscaling={"min_replicas": 2, "max_replicas": 2}
            ),
        },
        "models": {"m": {"chain": ["gpu", "cpu"]}, "cpu-only": {"chain": ["cpu"]}},
    }
    url = serve_deploy(config, nodes.port)

    status = cli_status(nodes.address)
    assert deployment_nodes(status, "gpu") == [nodes.gpu] * 4
    assert deployment_nodes(status, "cpu") == [nodes.cpu] * 2
    assert gpus_left(nodes.gpu) == 0  # four quarters fill the one GPU
    described = {d.name: d.backend for d in status.applications[0].deployments}
    assert described["gpu"] is not None and described["gpu"].dimensions == 64
    assert described["gpu"].space_id == described["cpu"].space_id
    assert described["router"] is None  # the ingress is not a backend
    assert_serves(url, "m")
    assert_serves(url, "cpu-only")
    # The dashboard REST API, as `serve status` reaches it: with the token when the
    # cluster runs token authentication.
    from ray._private.authentication.http_token_authentication import (
        get_auth_headers_if_auth_enabled,
    )

    headers = get_auth_headers_if_auth_enabled({})
    url_api = f"{nodes.dashboard}/api/serve/applications/"
    listed = httpx.get(url_api, headers=headers, timeout=30).json()
    assert set(listed["applications"][APP_NAME]["deployments"]) == {"gpu", "cpu", "router"}


def test_two_backends_share_one_gpu(nodes: Nodes) -> None:
    half = {"num_cpus": 0.1, "num_gpus": 0.5}
    config = {
        "server": {"router_num_cpus": 0.1},
        "backends": {
            "a": placed_hash_backend(half),
            "b": {**placed_hash_backend(half), "options": {"dimensions": 64, "seed": 7}},
        },
        "models": {"a": {"chain": ["a"]}, "b": {"chain": ["b"]}},
    }
    url = serve_deploy(config, nodes.port)

    status = collect_status()
    assert deployment_nodes(status, "a") == [nodes.gpu]
    assert deployment_nodes(status, "b") == [nodes.gpu]
    assert gpus_left(nodes.gpu) == 0  # two halves of the same, only, GPU
    assert_serves(url, "a")
    assert_serves(url, "b", seed=7)


class SteadyLoad:
    """`clients` threads sending one-text requests until stopped; keeps every answer."""

    def __init__(self, url: str, model: str, clients: int) -> None:
        self.url, self.model = url, model
        self.answers: list[tuple[str, int, np.ndarray | None]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)
        ]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _client(self, client: int) -> None:
        sent = 0
        while not self._stop.is_set():
            text = f"client {client} request {sent}: the quick brown fox"
            response = embed(self.url, model=self.model, input=[text])
            vectors = vectors_of(response) if response.status_code == 200 else None
            self.answers.append((text, response.status_code, vectors))
            sent += 1


def test_replicas_scale_up_under_load_and_back_down_to_min(nodes: Nodes) -> None:
    slow = {"fault": "slow", "slow_seconds": 0.3, "dimensions": 64}
    config = {
        "server": {"router_num_cpus": 0.1},
        "backends": {
            "slow": {
                "kind": "faulty-hash",
                "options": slow,
                "resources": CPU_ONLY,
                "batching": {"max_batch_size": 1},
                # Every health check would queue five 0.3 s probe batches on the one slot
                # this test measures autoscaling with.
                "canary": {"enabled": False},
                "max_ongoing_requests": 2,
                "autoscaling": {
                    "min_replicas": 1,
                    "max_replicas": 3,
                    "target_ongoing_requests": 1,
                    "upscale_delay_s": 1,
                    "downscale_delay_s": 2,
                },
            }
        },
        "models": {"slow": {"chain": ["slow"]}},
    }
    url = serve_deploy(config, nodes.port)
    assert running_replicas("slow") == 1

    with SteadyLoad(url, "slow", clients=6) as load:
        scale_up_s = wait_for(lambda: running_replicas("slow") == 3, 90, "3 replicas")
    scale_down_s = wait_for(lambda: running_replicas("slow") == 1, 120, "back to 1 replica")

    print(f"autoscaling: up to 3 in {scale_up_s:.1f} s, down to 1 in {scale_down_s:.1f} s")
    assert set(deployment_nodes(collect_status(describe=False), "slow")) == {nodes.cpu}
    assert load.answers and all(status == 200 for _, status, _ in load.answers)
    for text, _, vectors in load.answers:
        np.testing.assert_allclose(vectors, expected_vectors([text]), atol=1e-6)
