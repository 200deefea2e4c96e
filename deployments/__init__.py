"""The Ray Serve layer: backend deployments, the router ingress, the application builder.

Nothing in the core (`embedserve`) imports this package; only the CLI verbs that start
or inspect Serve (`serve`, `status`, `build-config`) do, inside their handlers.
`embedserve.deployments.batching`, `embedserve.deployments.grafana` and
`embedserve.deployments.replica_description` are pure Python, and
`embedserve.deployments.status` imports Ray only when it collects a status; the other
modules import Ray at import.
"""
