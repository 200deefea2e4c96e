"""The Ray Serve layer: backend deployments, the router ingress, the application builder.

`embedserve.deployments.batching` is pure Python; the other modules import Ray Serve.
"""
