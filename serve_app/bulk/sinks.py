"""Optional sinks fed from a finished output: a FAISS index and a Qdrant collection.

Both are rebuilt or upserted from the Parquet shards at the end of every run, one shard
at a time, so they hold exactly the output's rows and a resumed job stays exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedserve.bulk.manifest import SpaceInfo
from embedserve.bulk.shards import (
    DATA_DIR,
    SPARSE_COLUMN,
    committed_shards,
    iter_shard_tables,
    shard_sparse,
    shard_vectors,
)
from embedserve.bulk.spec import BulkError, JobSpec, Log, QdrantSpec
from embedserve.indexes import (
    DENSE_VECTOR,
    FAISS_IDS,
    FAISS_INDEX,
    SPARSE_VECTOR,
    ensure_qdrant_collection,
    point_id,
    qdrant_payload,
    save_faiss,
)
from embedserve.space import SpaceMismatch

if TYPE_CHECKING:
    import pyarrow as pa

_FAISS_TRAINING_ROWS = 50_000


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
        sinks["qdrant"] = write_qdrant(output, spec.qdrant, space, spec.sparse)
        log(f"qdrant: {sinks['qdrant']['points']} points in {spec.qdrant.collection}")
    return sinks


def write_faiss(output: Path, factory: str, space: SpaceInfo) -> dict[str, Any]:
    """Build `index.faiss` (labels 0..n-1), `faiss_ids.parquet` (label -> id) and
    `faiss_space.json`, so `embedserve.indexes.FaissIndex.load(output)` opens it bound to
    its space."""
    import faiss
    import pyarrow as pa

    shards = committed_shards(output, DATA_DIR)
    metric = faiss.METRIC_INNER_PRODUCT if space.normalized else faiss.METRIC_L2
    index = faiss.index_factory(space.dimensions, factory, metric)
    if not index.is_trained:
        index.train(_training_sample(shards))
    ids = []
    for table in iter_shard_tables(shards, ["id", "embedding"]):
        index.add(shard_vectors(table))
        ids += table.column("id").chunks
    save_faiss(output, index, pa.chunked_array(ids, pa.string()), space)
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


def write_qdrant(
    output: Path, target: QdrantSpec, space: SpaceInfo, sparse: bool = False
) -> dict[str, Any]:
    """Upsert every vector into a collection with a `dense` named vector, and a `sparse`
    named sparse vector when the output has them; the payload holds the id and the
    space metadata.

    Raises:
        SinkError: the collection already holds vectors of another space, or has no
            sparse vectors where the output has them.
    """
    client = qdrant_client(target.location)
    columns = ["id", "embedding", SPARSE_COLUMN] if sparse else ["id", "embedding"]
    try:
        try:
            ensure_qdrant_collection(client, target.collection, space, sparse)
        except (SpaceMismatch, ValueError) as exc:
            raise SinkError(str(exc)) from None
        for table in iter_shard_tables(committed_shards(output, DATA_DIR), columns):
            client.upsert(target.collection, points=_points(table, space, sparse))
        points = client.count(target.collection, exact=True).count
    finally:
        client.close()
    return {"location": target.location, "collection": target.collection, "points": points}


def _points(table: pa.Table, space: SpaceInfo, sparse: bool) -> list[Any]:
    """A shard's rows as Qdrant points."""
    from qdrant_client import models

    ids = table.column("id").to_pylist()
    vectors: list[dict[str, Any]] = [{DENSE_VECTOR: row.tolist()} for row in shard_vectors(table)]
    if sparse:
        for named, vector in zip(vectors, shard_sparse(table), strict=True):
            named[SPARSE_VECTOR] = models.SparseVector(
                indices=vector.indices.tolist(), values=vector.values.tolist()
            )
    return [
        models.PointStruct(id=point_id(row_id), vector=named, payload=qdrant_payload(row_id, space))
        for row_id, named in zip(ids, vectors, strict=True)
    ]
