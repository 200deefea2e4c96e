"""The command line: `embedserve` and its verbs (main), `serve`, the ops verbs, `verify`.

The top layer: only these modules import the Serve layer (`embedserve.deployments`).
"""
