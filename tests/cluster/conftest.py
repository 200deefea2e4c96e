"""Several Ray nodes on one machine (`ray.cluster_utils.Cluster`) with logical GPUs and
custom resources; apps are deployed from `embedserve build-config` output the way
`serve deploy` does it.

pytest runs every tier in one process, and a Cluster must own the process's Ray
connection: every tier stops its Ray after its last test, so none is connected when a
cluster module starts, whatever order the tiers run in. One Cluster per test module at
most, to keep the tier within a small machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np

from embedserve import EmbedInput
from embedserve.config import parse_config
from embedserve.deployments.app import APP_NAME
from embedserve.deployments.serve_config import serve_deploy_config
from embedserve.deployments.status import ClusterStatus, collect_status
from embedserve.plugins.hash_backend import HashBackend

# Node deaths are noticed in ~2 s instead of ~15 s; autoscaling metrics arrive every 0.5 s.
FAST_FAILURE_DETECTION = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}
FAST_AUTOSCALING_ENV = {
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}


@contextmanager
def local_cluster(
    head: dict[str, Any], workers: list[dict[str, Any]]
) -> Iterator[tuple[Any, list[Any]]]:
    """A head and worker nodes in this machine, connected, with Serve not yet started.

    Yields the `Cluster` and its worker nodes in the order of `workers`.
    """
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    saved_env = {key: os.environ.get(key) for key in FAST_AUTOSCALING_ENV}
    os.environ.update(FAST_AUTOSCALING_ENV)  # node processes inherit it
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "include_dashboard": False,
            "_system_config": FAST_FAILURE_DETECTION,
            **head,
        },
    )
    try:
        nodes = [cluster.add_node(**worker) for worker in workers]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="embedserve-cluster-tests")
        yield cluster, nodes
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def serve_deploy(config: dict[str, Any], port: int) -> str:
    """Deploy an embedserve config through its generated Serve config; returns the URL.

    This is what `serve deploy` asks the dashboard to do (`serve_head.py`): start Serve
    with the config's HTTP options, then apply the config and wait for it to run. Serve
    keeps the port of its first start, so a module deploys every config on one port.
    """
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    deploy_config = serve_deploy_config(parse_config(config), host="127.0.0.1", port=port)
    # Every node of this cluster is on one machine: one proxy, or they fight over the port.
    deploy_config["proxy_location"] = "HeadOnly"
    schema = ServeDeploySchema.model_validate(deploy_config)
    client = serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
    )
    client.deploy_apps(schema)
    # Ray's blocking deploy gives up after a fixed 60 s; replicas of a fresh cluster on two
    # busy cores can take longer to start.
    wait_for(_embedserve_running, 240, "the embedserve app to run")
    return f"http://127.0.0.1:{port}"


def _embedserve_running() -> bool:
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    app = serve.status().applications.get(APP_NAME)
    return app is not None and app.status == ApplicationStatus.RUNNING


def cli_status(address: str, auth_mode: str | None = None) -> ClusterStatus:
    """`embedserve status --json` run as its own process against the cluster.

    Args:
        address: the cluster's GCS address.
        auth_mode: the cluster's RAY_AUTH_MODE (default: this process's, else disabled).
    """
    # The client must use the cluster's auth mode: `ray.cluster_utils` nodes take it from
    # this process's environment (no token auth unless RAY_AUTH_MODE says so), and a
    # token file on the machine must not decide for the client.
    mode = auth_mode or os.environ.get("RAY_AUTH_MODE", "disabled")
    env = {**os.environ, "RAY_AUTH_MODE": mode}
    command = [
        sys.executable,
        "-m",
        "embedserve.cli.main",
        "status",
        "--json",
        "--address",
        address,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return ClusterStatus.model_validate_json(result.stdout)


def deployment_nodes(status: ClusterStatus, deployment: str) -> list[str | None]:
    """The node id of every RUNNING replica of one deployment of the embedserve app."""
    (app,) = [a for a in status.applications if a.name == APP_NAME]
    (found,) = [d for d in app.deployments if d.name == deployment]
    return [r.node_id for r in found.replicas if r.state == "RUNNING"]


def running_replicas(deployment: str) -> int:
    """How many replicas of a deployment are RUNNING now."""
    return len(deployment_nodes(collect_status(describe=False), deployment))


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll until `condition()` holds; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.25)
    return time.monotonic() - started


def placed_hash_backend(resources: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """A 64-dimensional `hash` backend config with the given resources."""
    return {"kind": "hash", "options": {"dimensions": 64}, "resources": resources, **settings}


def expected_vectors(texts: list[str], **options: Any) -> np.ndarray:
    """What the hash backend must answer for these texts (computed here, no Ray)."""
    backend = HashBackend({"dimensions": 64, **options})
    return backend.embed_batch([EmbedInput(text) for text in texts]).dense


def vectors_of(response: httpx.Response) -> np.ndarray:
    """The answer's vectors as an array, in input order."""
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)
