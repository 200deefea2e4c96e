"""One canary reference per space across the cluster: the KubeRay-upgrade case on two
nodes. A replica on node A records the space's reference; then a replica of the same
space whose vectors drifted (finite, cosine about 0.99) starts on node B with an empty
state dir, as a new pod does. It is refused against the cluster's reference instead of
recording its own vectors as the truth, and no request gets a drifted vector."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from embedserve_faults import FaultyHashBackend

from embedserve import EmbedInput
from embedserve.cli.ray_auth import RAY_TOKEN_FILE
from tests.cluster.conftest import (
    cli_status,
    expected_vectors,
    local_cluster,
    serve_deploy,
    vectors_of,
    wait_for,
)
from tests.integration.conftest import free_port

pytestmark = pytest.mark.cluster

PERTURBATION = 0.14  # moves each unit vector to a cosine of about 0.99


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    workers = [
        {"num_cpus": 1, "resources": {"node_a": 1}},
        {"num_cpus": 1, "resources": {"node_b": 1}},
    ]
    with local_cluster(head={"num_cpus": 1}, workers=workers) as (cluster, _):
        yield cluster.address


def on_node(node: str, home: Path) -> dict[str, Any]:
    """Resources of a replica pinned to a node whose home (and state dir) is `home`.

    A pod with its own home still has the cluster's Ray token provisioned: where this
    process runs Ray with token auth (the bulk tier turns it on), the replica's workers
    must find the token outside their new home.
    """
    env_vars = {"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(RAY_TOKEN_FILE.expanduser())}
    return {"num_cpus": 0.1, "resources": {node: 0.1}, "runtime_env": {"env_vars": env_vars}}


def app_config(tmp_path: Path, with_drifted: bool) -> dict[str, Any]:
    # `~` expands on each node: the state dir is per node, the registry's scope is one.
    server = {"state_dir": "~/embedserve-state", "router_num_cpus": 0.1}
    backends: dict[str, Any] = {
        "healthy": {
            "kind": "hash",
            "options": {"dimensions": 64},
            "resources": on_node("node_a", tmp_path / "node-a"),
        }
    }
    chain = ["healthy"]
    if with_drifted:
        backends["drifted"] = {
            "kind": "faulty-hash",
            "options": {"dimensions": 64, "fault": "perturb", "perturbation": PERTURBATION},
            "resources": on_node("node_b", tmp_path / "node-b"),
        }
        chain = ["drifted", "healthy"]  # the same space: the chain may fall through
    return {"server": server, "backends": backends, "models": {"m": {"chain": chain}}}


def test_a_drifted_replica_on_a_fresh_node_is_refused_while_the_other_serves(
    cluster: str, tmp_path: Path
) -> None:
    clean = expected_vectors(["probe"])
    drifted = FaultyHashBackend(
        {"dimensions": 64, "fault": "perturb", "perturbation": PERTURBATION}
    ).embed_batch([EmbedInput("probe")])
    assert 0.98 < float(clean[0] @ drifted.dense[0]) < 0.995, "a small, finite drift"

    port = free_port()
    url = serve_deploy(app_config(tmp_path, with_drifted=False), port)
    assert httpx.post(f"{url}/v1/embeddings", json={"model": "m", "input": "x"}).status_code == 200
    serve_deploy(app_config(tmp_path, with_drifted=True), port)

    def drifted_refused() -> bool:
        models = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["chain"]
        return next(b for b in models if b["name"] == "drifted")["available"] is False

    wait_for(drifted_refused, 60, "the drifted replica to report its canary")
    texts = [f"text {i}" for i in range(40)]
    for text in texts:
        response = httpx.post(f"{url}/v1/embeddings", json={"model": "m", "input": [text]})
        assert response.status_code == 200
        assert response.headers["X-Embedding-Backend"] == "healthy"
        np.testing.assert_allclose(vectors_of(response), expected_vectors([text]), atol=1e-6)

    chain = httpx.get(f"{url}/v1/models").json()["data"][0]["chain"]
    reason = next(b for b in chain if b["name"] == "drifted")["reason"]
    assert "the cluster's reference" in reason and "has cosine 0.99" in reason
    assert not list((tmp_path / "node-b").rglob("*.json")), "node B recorded nothing"
    assert list((tmp_path / "node-a").rglob("*.json")), "node A's cache holds the reference"

    outcomes = {c.backend: c for c in cli_status(cluster).canaries.values()}
    assert outcomes["healthy"].outcome in {"recorded", "passed"}
    assert outcomes["drifted"].outcome == "failed"
    assert outcomes["drifted"].origin == "cluster's reference"
