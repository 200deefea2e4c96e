"""Optional sinks fed from a finished output: a FAISS index and a Qdrant collection.

Both are rebuilt or upserted from the Parquet shards at the end of every run, one shard
at a time, so they hold exactly the output's rows and a resumed job stays exact.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.bulk.manifest import SpaceInfo
from serve_app.bulk.shards import DATA_DIR, committed_shards, iter_shard_tables, shard_vectors
from serve_app.bulk.spec import BulkError, JobSpec, Log, QdrantSpec

FAISS_INDEX = "index.faiss"
FAISS_IDS = "faiss_ids.parquet"
DENSE_VECTOR = "dense"
_FAISS_TRAINING_ROWS = 50_000
# Point ids must be UUIDs or integers: one UUID per embedserve id, stable across runs.
_POINT_NAMESPACE = uuid.UUID("6f1c9f8e-0f0b-4b7e-9a53-3f1d2c4b5a69")


class SinkError(BulkError):
    """A sink refuses the output (another space is already there)."""


def write_sinks(spec: JobSpec, space: SpaceInfo, log: Log) -> dict[str, Any]:
    """Feed the configured sinks from the output; what each one holds (for the manifest)."""
    output = Path(spec.output)
    sinks: dict[str, Any] = {}
    if spec.faiss is not None:
        sinks["faiss"] = write_faiss(output, spec.faiss, space)
        log(f"faiss: {sinks['faiss']['vectors']} vectors in {output / FAISS_INDEX}")
    if spec.qdrant is not None:
        sinks["qdrant"] = write_qdrant(output, spec.qdrant, space)
        log(f"qdrant: {sinks['qdrant']['points']} points in {spec.qdrant.collection}")
    return sinks


def write_faiss(output: Path, factory: str, space: SpaceInfo) -> dict[str, Any]:
    """Build `index.faiss` (labels 0..n-1) and `faiss_ids.parquet` (label -> id)."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = committed_shards(output, DATA_DIR)
    metric = faiss.METRIC_INNER_PRODUCT if space.normalized else faiss.METRIC_L2
    index = faiss.index_factory(space.dimensions, factory, metric)
    if not index.is_trained:
        index.train(_training_sample(shards))
    ids = []
    for table in iter_shard_tables(shards, ["id", "embedding"]):
        index.add(shard_vectors(table))
        ids += table.column("id").chunks
    temporary = output / f".{FAISS_INDEX}.tmp"
    faiss.write_index(index, str(temporary))
    os.replace(temporary, output / FAISS_INDEX)
    pq.write_table(pa.table({"id": pa.chunked_array(ids, pa.string())}), output / FAISS_IDS)
    return {
        "index": FAISS_INDEX,
        "ids": FAISS_IDS,
        "factory": factory,
        "metric": "inner_product" if space.normalized else "l2",
        "vectors": int(index.ntotal),
    }


def _training_sample(shards: list[str]) -> np.ndarray:
    parts, rows = [], 0
    for table in iter_shard_tables(shards, ["embedding"]):
        parts.append(shard_vectors(table))
        rows += len(parts[-1])
        if rows >= _FAISS_TRAINING_ROWS:
            break
    return np.concatenate(parts)


def qdrant_client(location: str) -> Any:
    """A client of a Qdrant server (`http(s)://...`) or of a local-mode folder."""
    from qdrant_client import QdrantClient

    if location.startswith(("http://", "https://")):
        return QdrantClient(url=location)
    return QdrantClient(path=location)


def point_id(row_id: str) -> str:
    """The Qdrant point id of an embedserve id."""
    return str(uuid.uuid5(_POINT_NAMESPACE, row_id))


def write_qdrant(output: Path, target: QdrantSpec, space: SpaceInfo) -> dict[str, Any]:
    """Upsert every vector into a collection with a `dense` named vector; the payload
    holds the id and the space metadata.

    Raises:
        SinkError: the collection already holds vectors of another space.
    """
    from qdrant_client import models

    client = qdrant_client(target.location)
    try:
        _ensure_collection(client, target.collection, space)
        for table in iter_shard_tables(committed_shards(output, DATA_DIR), ["id", "embedding"]):
            vectors = shard_vectors(table)
            client.upsert(
                target.collection,
                points=[
                    models.PointStruct(
                        id=point_id(row_id),
                        vector={DENSE_VECTOR: vector.tolist()},
                        payload=_payload(row_id, space),
                    )
                    for row_id, vector in zip(table.column("id").to_pylist(), vectors, strict=True)
                ],
            )
        points = client.count(target.collection, exact=True).count
    finally:
        client.close()
    return {"location": target.location, "collection": target.collection, "points": points}


def _payload(row_id: str, space: SpaceInfo) -> dict[str, Any]:
    return {
        "id": row_id,
        "model": space.model,
        "backend": space.backend,
        "space_id": space.space_id,
        "dimensions": space.dimensions,
        "normalized": space.normalized,
    }


def _ensure_collection(client: Any, name: str, space: SpaceInfo) -> None:
    from qdrant_client import models

    if not client.collection_exists(name):
        client.create_collection(
            name,
            vectors_config={
                DENSE_VECTOR: models.VectorParams(
                    size=space.dimensions, distance=models.Distance.COSINE
                )
            },
        )
        return
    points, _ = client.scroll(name, limit=1, with_payload=True)
    if points and points[0].payload.get("space_id") != space.space_id:
        raise SinkError(
            f"Qdrant collection {name} holds vectors of space {points[0].payload.get('space_id')}, "
            f"not {space.space_id}; use another collection"
        )
