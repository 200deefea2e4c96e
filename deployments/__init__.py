"""The Ray Serve layer: backend deployments, the router ingress, the application builder.

`deployments.batching` is pure Python; the other modules import Ray Serve.
"""
