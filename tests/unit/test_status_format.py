"""`embedserve status` formatting (collection needs Ray: tests/cluster covers it), and the
private Serve client collection relies on."""

from __future__ import annotations

import inspect

from ray.serve import context
from ray.serve._private.client import ServeControllerClient
from ray.serve.schema import (
    ApplicationDetails,
    DeploymentDetails,
    DeploymentTopology,
    ReplicaDetails,
    ServeInstanceDetails,
)

from embedserve.deployments.status import (
    ApplicationInfo,
    BackendDescription,
    ClusterStatus,
    DeploymentInfo,
    NodeInfo,
    ReplicaInfo,
    format_status,
)

HEAD = NodeInfo(node_id="aaaaaaaa1111", address="10.0.0.1", alive=True, gpus=0, head=True)
GPU = NodeInfo(node_id="bbbbbbbb2222", address="10.0.0.2", alive=False, gpus=1, head=False)


def _replica(replica_id: str, node: NodeInfo) -> ReplicaInfo:
    return ReplicaInfo(
        replica_id=replica_id,
        state="RUNNING",
        node_id=node.node_id,
        node_address=node.address,
        pid=1,
    )


def test_status_shows_nodes_deployments_spaces_and_replica_nodes() -> None:
    backend = DeploymentInfo(
        name="gpu",
        status="HEALTHY",
        message="",
        replica_states={"RUNNING": 2},
        replicas=[_replica("r1", GPU), _replica("r2", GPU)],
        backend=BackendDescription(
            replica="r2",
            kind="hash",
            space_id="hash-123",
            dimensions=64,
            max_batch_tokens=16384,
            available=True,
            reason=None,
        ),
    )
    router = DeploymentInfo(
        name="router",
        status="UPDATING",
        message="waiting for resources",
        replica_states={"STARTING": 1},
        replicas=[],
    )
    status = ClusterStatus(
        nodes=[HEAD, GPU],
        applications=[
            ApplicationInfo(
                name="embedserve",
                status="DEPLOYING",
                message="",
                route_prefix="/",
                deployments=[backend, router],
            )
        ],
    )

    assert format_status(status).splitlines() == [
        "nodes (1 alive):",
        "  10.0.0.1 aaaaaaaa head, 0 GPUs, alive",
        "  10.0.0.2 bbbbbbbb worker, 1 GPUs, dead",
        "application embedserve DEPLOYING (route /)",
        "  deployment gpu HEALTHY (2 RUNNING)",
        "    hash, space hash-123, 64 dimensions, batches up to 16384 tokens, available "
        "(replica r2 says)",
        "    replica r1 RUNNING on 10.0.0.2 bbbbbbbb",
        "    replica r2 RUNNING on 10.0.0.2 bbbbbbbb",
        "  deployment router UPDATING (1 STARTING): waiting for resources",
    ]


def test_unavailable_backend_and_empty_cluster() -> None:
    unavailable = BackendDescription(
        replica="r9",
        kind="faulty-hash",
        space_id="s",
        dimensions=None,
        max_batch_tokens=16384,
        available=False,
        reason="no GPU",
    )
    deployment = DeploymentInfo(
        name="b", status="HEALTHY", message="", replica_states={}, replicas=[], backend=unavailable
    )
    app = ApplicationInfo(
        name="a", status="RUNNING", message="", route_prefix=None, deployments=[deployment]
    )

    text = format_status(ClusterStatus(nodes=[HEAD], applications=[app]))
    assert "  deployment b HEALTHY (no replicas)" in text
    assert (
        "    faulty-hash, space s, ? dimensions, batches up to 16384 tokens, unavailable: "
        "no GPU (replica r9 says)"
    ) in text
    assert format_status(ClusterStatus(nodes=[HEAD], applications=[])).endswith(
        "no Serve applications"
    )


def test_a_backend_that_failed_to_load_names_its_cause_and_log() -> None:
    failed = BackendDescription(
        replica="r3",
        kind="sentence-transformers",
        space_id="s",
        dimensions=None,
        max_batch_tokens=8192,
        available=False,
        reason="FileNotFoundError: model folder /m does not exist",
        log="/tmp/ray/session/logs/serve/replica_embedserve_gone_r3.log",
        load_attempts=4,
    )
    deployment = DeploymentInfo(
        name="gone", status="HEALTHY", message="", replica_states={}, replicas=[], backend=failed
    )
    app = ApplicationInfo(
        name="a", status="RUNNING", message="", route_prefix=None, deployments=[deployment]
    )

    lines = format_status(ClusterStatus(nodes=[HEAD], applications=[app])).splitlines()
    at = lines.index("  deployment gone HEALTHY (no replicas)")
    assert lines[at + 1 : at + 3] == [
        "    sentence-transformers, space s, ? dimensions, batches up to 8192 tokens, "
        "unavailable: FileNotFoundError: model folder /m does not exist (replica r3 says)",
        "    load failed 4 times, retrying; traceback in "
        "/tmp/ray/session/logs/serve/replica_embedserve_gone_r3.log",
    ]


def test_the_private_serve_client_status_reads_is_still_there() -> None:
    """`collect_status` reads replica placement through Ray's private controller client
    (deployments/status.py says why): fail here, not on a cluster, when Ray changes it."""
    client = context._get_global_client
    assert list(inspect.signature(client).parameters) == ["raise_if_no_controller_running"]
    assert list(inspect.signature(ServeControllerClient.get_serve_details).parameters) == ["self"]
    # Its answer has the public ServeInstanceDetails shape; these are the fields read.
    assert "applications" in ServeInstanceDetails.model_fields
    assert {"route_prefix", "deployments", "deployment_topology"} <= set(
        ApplicationDetails.model_fields
    )
    assert "ingress_deployment" in DeploymentTopology.model_fields
    assert "replicas" in DeploymentDetails.model_fields
    assert {"replica_id", "state", "node_id", "pid"} <= set(ReplicaDetails.model_fields)
