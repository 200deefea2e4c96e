"""`embedserve status`: applications, deployments, replicas and their nodes, from Serve.

Application and deployment states come from `serve.status()`; replicas and the nodes they
run on from the Serve controller's instance details (what the dashboard's
`/api/serve/applications/` serves) joined with Ray's node table; vector space and
dimensions from each backend deployment's own `describe`. Needs a connected Ray.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from embedserve.deployments.replica_description import ReplicaDescription

if TYPE_CHECKING:
    from ray.serve._private.client import ServeControllerClient

DESCRIBE_TIMEOUT_S = 5.0


class NodeInfo(BaseModel):
    """A Ray node as `status` shows it."""

    node_id: str
    address: str
    alive: bool
    gpus: float
    head: bool


class ReplicaInfo(BaseModel):
    """One replica of a deployment and where it runs."""

    replica_id: str
    state: str
    node_id: str | None
    node_address: str | None
    pid: int | None


class BackendDescription(BaseModel):
    """What a backend deployment says of itself (`BackendDeployment.describe`), as
    answered by one of its replicas."""

    replica: str
    kind: str
    space_id: str
    dimensions: int | None
    max_batch_tokens: int
    available: bool
    reason: str | None
    log: str | None = None  # the replica's log file, when its load failed
    load_attempts: int | None = None  # failed load attempts so far


class DeploymentInfo(BaseModel):
    """A deployment's state, replicas and, for backends, its vector space."""

    name: str
    status: str
    message: str
    replica_states: dict[str, int]
    replicas: list[ReplicaInfo]
    backend: BackendDescription | None = None


class ApplicationInfo(BaseModel):
    """A Serve application and its deployments."""

    name: str
    status: str
    message: str
    route_prefix: str | None
    deployments: list[DeploymentInfo]


class ReplicaCanary(BaseModel):
    """A replica's last canary check: its outcome and the reference that judged it."""

    backend: str
    space_id: str
    outcome: str
    problem: str | None
    origin: str | None
    checked_at: float


class ClusterStatus(BaseModel):
    """Everything `embedserve status` reports."""

    nodes: list[NodeInfo]
    applications: list[ApplicationInfo]
    canaries: dict[str, ReplicaCanary] = {}  # by replica id


def serve_client() -> ServeControllerClient:
    """Ray's Serve controller client of the connected cluster (private; see
    `collect_status` for why it is read, and tests/unit/test_status_format.py).

    Raises:
        RuntimeError: Serve is not running on that cluster.
    """
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running on the connected Ray cluster")
    return client


def collect_status(describe: bool = True) -> ClusterStatus:
    """The Serve status of the connected Ray cluster.

    Args:
        describe: also ask each backend deployment for its space and dimensions.
    """
    import ray
    from ray import serve

    from embedserve.deployments.canary_registry import replica_canaries

    nodes = [_node(node) for node in ray.nodes()]
    overview = serve.status()
    if not overview.applications:  # also when Serve was never started on this cluster
        return ClusterStatus(nodes=nodes, applications=[])
    # Replica placement is in the controller's instance details (the public
    # `ServeInstanceDetails` shape), not in serve.status(). Ray's public ways to them are
    # the dashboard's REST API and `serve status`, which calls it: an HTTP client, the
    # dashboard's address and its auth on top of the Ray connection this already has.
    # The private client fails tests/unit/test_status_format.py when it changes.
    details = serve_client().get_serve_details().get("applications", {})
    addresses = {node.node_id: node.address for node in nodes}
    applications = []
    for app_name, app in overview.applications.items():
        app_details = details.get(app_name, {})
        deployments = [
            _deployment(name, state, app_details.get("deployments", {}).get(name, {}), addresses)
            for name, state in app.deployments.items()
        ]
        if describe:
            _describe_backends(app_name, deployments, _ingress(app_details))
        applications.append(
            ApplicationInfo(
                name=app_name,
                status=_name(app.status),
                message=app.message,
                route_prefix=app_details.get("route_prefix"),
                deployments=deployments,
            )
        )
    canaries = {
        replica: ReplicaCanary.model_validate(outcome)
        for replica, outcome in replica_canaries().items()
    }
    return ClusterStatus(nodes=nodes, applications=applications, canaries=canaries)


def _node(node: dict[str, Any]) -> NodeInfo:
    resources = node.get("Resources", {})
    return NodeInfo(
        node_id=node["NodeID"],
        address=node["NodeManagerAddress"],
        alive=bool(node["Alive"]),
        gpus=float(resources.get("GPU", 0)),
        head=any(key.startswith("node:__internal_head__") for key in resources),
    )


def _deployment(
    name: str, state: Any, details: dict[str, Any], addresses: dict[str, str]
) -> DeploymentInfo:
    replicas = [
        ReplicaInfo(
            replica_id=replica["replica_id"],
            state=_name(replica["state"]),
            node_id=replica.get("node_id"),
            node_address=addresses.get(replica.get("node_id") or ""),
            pid=replica.get("pid"),
        )
        for replica in details.get("replicas", [])
    ]
    return DeploymentInfo(
        name=name,
        status=_name(state.status),
        message=state.message,
        replica_states={_name(k): v for k, v in state.replica_states.items()},
        replicas=replicas,
    )


def _name(state: Any) -> str:
    """A Serve state enum (or its plain value) as its name, `RUNNING`."""
    return str(getattr(state, "value", state))


def _ingress(app_details: dict[str, Any]) -> str | None:
    topology = app_details.get("deployment_topology") or {}
    return topology.get("ingress_deployment")


def _describe_backends(app: str, deployments: list[DeploymentInfo], ingress: str | None) -> None:
    """Fill in each backend's space and dimensions; deployments that cannot answer (not
    backends, or no running replica) keep `backend` None."""
    from ray import serve

    pending = {
        deployment.name: serve.get_deployment_handle(deployment.name, app).describe.remote()
        for deployment in deployments
        if deployment.name != ingress and deployment.replica_states.get("RUNNING")
    }
    for deployment in deployments:
        if deployment.name not in pending:
            continue
        try:
            described = pending[deployment.name].result(timeout_s=DESCRIBE_TIMEOUT_S)
        except Exception:  # not an embedserve backend, or it did not answer in time
            continue
        if not isinstance(described, ReplicaDescription):
            continue  # a `describe` of a deployment that is not an embedserve backend
        load_failure = described.load_failure
        deployment.backend = BackendDescription(
            replica=described.replica,
            kind=described.kind,
            space_id=described.space_id,
            dimensions=described.capabilities.dimensions,
            max_batch_tokens=described.batching.batch_tokens,
            available=bool(described.available),
            reason=described.reason,
            log=load_failure.log if load_failure else None,
            load_attempts=load_failure.attempts if load_failure else None,
        )


def format_status(status: ClusterStatus) -> str:
    """The status as indented text, one line per node, application, deployment, replica."""
    lines = [f"nodes ({sum(node.alive for node in status.nodes)} alive):"]
    for node in status.nodes:
        role = "head" if node.head else "worker"
        state = "alive" if node.alive else "dead"
        lines.append(f"  {node.address} {node.node_id[:8]} {role}, {node.gpus:g} GPUs, {state}")
    if not status.applications:
        lines.append("no Serve applications")
    for app in status.applications:
        message = f": {app.message}" if app.message else ""
        lines.append(f"application {app.name} {app.status} (route {app.route_prefix}){message}")
        for deployment in app.deployments:
            lines += _format_deployment(deployment, status.canaries)
    return "\n".join(lines)


def _format_deployment(deployment: DeploymentInfo, canaries: dict[str, ReplicaCanary]) -> list[str]:
    states = ", ".join(f"{n} {s}" for s, n in sorted(deployment.replica_states.items()))
    message = f": {deployment.message}" if deployment.message else ""
    lines = [f"  deployment {deployment.name} {deployment.status} ({states or 'no replicas'})"]
    lines[0] += message
    backend = deployment.backend
    if backend is not None:
        available = "available" if backend.available else f"unavailable: {backend.reason}"
        dimensions = backend.dimensions if backend.dimensions is not None else "?"
        lines.append(
            f"    {backend.kind}, space {backend.space_id}, {dimensions} dimensions, "
            f"batches up to {backend.max_batch_tokens} tokens, {available} "
            f"(replica {backend.replica} says)"
        )
        if backend.load_attempts:
            lines.append(
                f"    load failed {backend.load_attempts} times, retrying; "
                f"traceback in {backend.log or 'the replica log'}"
            )
    for replica in deployment.replicas:
        node = f"{replica.node_address} {(replica.node_id or '')[:8]}"
        lines.append(f"    replica {replica.replica_id} {replica.state} on {node}")
        if replica.replica_id in canaries:
            lines.append(f"      canary {_format_canary(canaries[replica.replica_id])}")
    return lines


def _format_canary(canary: ReplicaCanary) -> str:
    """`passed at 12:00:01 UTC against the pinned reference ...`, or why it failed."""
    checked = time.strftime("%H:%M:%S", time.gmtime(canary.checked_at))
    if canary.outcome == "failed":
        return f"FAILED at {checked} UTC: {canary.problem}"
    against = f" against the {canary.origin}" if canary.outcome == "passed" else ""
    return f"{canary.outcome} at {checked} UTC{against}"
