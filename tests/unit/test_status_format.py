"""`embedserve status` formatting (collection needs Ray: tests/cluster covers it)."""

from __future__ import annotations

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
