"""Bulk encoding: corpora embedded by Ray jobs with the same backend plugins as the server.

`embedserve encode` submits a Ray job (`python -m embedserve.bulk.job`) that runs a Ray
Data pipeline: read the input, embed it with an actor pool of one configured backend,
write Parquet shards with per-row space metadata and a `manifest.json`. Importing this
package imports neither Ray nor pyarrow: the modules import them inside functions.
"""
