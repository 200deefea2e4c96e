"""Vector indexes that hold one space: FAISS and Qdrant, each bound to a `SpaceGuard`.

The bulk job's sinks and the Python client write through the same code, so a vector of
another space is refused at the write wherever it comes from. FAISS and Qdrant are
imported when an index is used (the `client` extra installs them).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedserve.space import SpaceGuard

FAISS_INDEX = "index.faiss"
FAISS_IDS = "faiss_ids.parquet"
FAISS_SPACE = "faiss_space.json"
DENSE_VECTOR = "dense"
SPARSE_VECTOR = "sparse"
# Point ids must be UUIDs or integers: one UUID per embedserve id, stable across runs.
_POINT_NAMESPACE = uuid.UUID("6f1c9f8e-0f0b-4b7e-9a53-3f1d2c4b5a69")


class Space(Protocol):
    """The space metadata an index keeps: a client result or a bulk job's space (read
    only: frozen dataclasses and pydantic models both qualify)."""

    @property
    def model(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def space_id(self) -> str: ...
    @property
    def dimensions(self) -> int: ...
    @property
    def normalized(self) -> bool: ...


class StampedVectors(Space, Protocol):
    """Dense vectors with their space (`embedserve.client.Embeddings`)."""

    @property
    def vectors(self) -> np.ndarray: ...


@dataclass(frozen=True)
class IndexSpace:
    """The space an index was created for, as stored beside it."""

    model: str
    backend: str
    space_id: str
    dimensions: int
    normalized: bool

    @classmethod
    def of(cls, space: Space) -> IndexSpace:
        """The index space of a result or a bulk job's space."""
        return cls(space.model, space.backend, space.space_id, space.dimensions, space.normalized)


class FaissIndex:
    """A FAISS index of one space, with string ids: `add` and `search` refuse vectors of
    another space (unless its guard opts in), before FAISS sees them.

    Inner product for normalised spaces (cosine), L2 otherwise.
    """

    def __init__(self, index: Any, space: IndexSpace, ids: list[str], guard: SpaceGuard) -> None:
        self.index = index
        self.space = space
        self.ids = ids
        self.guard = guard

    @classmethod
    def create(
        cls, space: Space, factory: str = "Flat", allow_cross_space: bool = False
    ) -> FaissIndex:
        """An empty index for vectors of `space` (a FAISS `index_factory` string)."""
        import faiss

        metric = faiss.METRIC_INNER_PRODUCT if space.normalized else faiss.METRIC_L2
        index = faiss.index_factory(space.dimensions, factory, metric)
        guard = SpaceGuard(space.space_id, allow_cross_space)
        return cls(index, IndexSpace.of(space), [], guard)

    @classmethod
    def load(cls, folder: str | Path, allow_cross_space: bool = False) -> FaissIndex:
        """The index saved in `folder` (by `save`, or by a bulk job's FAISS sink)."""
        import faiss
        import pyarrow.parquet as pq

        folder = Path(folder)
        space = IndexSpace(**json.loads((folder / FAISS_SPACE).read_text()))
        ids = pq.read_table(folder / FAISS_IDS).column("id").to_pylist()
        index = faiss.read_index(str(folder / FAISS_INDEX))
        return cls(index, space, ids, SpaceGuard(space.space_id, allow_cross_space))

    def add(self, embeddings: StampedVectors, ids: Sequence[str]) -> None:
        """Add vectors under `ids`.

        Raises:
            SpaceMismatch: the vectors are of another space (nothing is added).
            ValueError: `ids` and vectors differ in number.
        """
        self.guard.check(embeddings.space_id, f"{len(ids)} vectors")
        if len(ids) != len(embeddings.vectors):
            raise ValueError(f"{len(ids)} ids for {len(embeddings.vectors)} vectors")
        if not self.index.is_trained:
            self.index.train(_float32(embeddings.vectors))
        self.index.add(_float32(embeddings.vectors))
        self.ids.extend(ids)

    def search(self, queries: StampedVectors, k: int = 10) -> list[list[tuple[str, float]]]:
        """The `k` nearest ids and scores of each query vector.

        Raises:
            SpaceMismatch: the queries are of another space than the index.
        """
        self.guard.check(queries.space_id, "query vectors")
        scores, labels = self.index.search(_float32(queries.vectors), k)
        return [
            [
                (self.ids[label], float(score))
                for label, score in zip(row, row_scores, strict=True)
                if label >= 0  # FAISS pads with -1 when the index has fewer than k vectors
            ]
            for row, row_scores in zip(labels, scores, strict=True)
        ]

    def save(self, folder: str | Path) -> None:
        """Write the index, its ids and its space into `folder`."""
        save_faiss(Path(folder), self.index, self.ids, self.space)


def save_faiss(folder: Path, index: Any, ids: Sequence[str] | Any, space: Space) -> None:
    """`index.faiss` (labels 0..n-1), `faiss_ids.parquet` (label -> id; a list or an
    Arrow array of strings) and the space, each file written whole."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{FAISS_INDEX}.tmp"
    faiss.write_index(index, str(temporary))
    os.replace(temporary, folder / FAISS_INDEX)
    column = ids if isinstance(ids, pa.ChunkedArray) else pa.array(list(ids), pa.string())
    pq.write_table(pa.table({"id": column}), folder / FAISS_IDS)
    (folder / FAISS_SPACE).write_text(json.dumps(vars(IndexSpace.of(space))))


def _float32(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


def point_id(row_id: str) -> str:
    """The Qdrant point id of an embedserve id."""
    return str(uuid.uuid5(_POINT_NAMESPACE, row_id))


def qdrant_payload(row_id: str, space: Space) -> dict[str, Any]:
    """The payload of a point: its id and the space metadata."""
    return {
        "id": row_id,
        "model": space.model,
        "backend": space.backend,
        "space_id": space.space_id,
        "dimensions": space.dimensions,
        "normalized": space.normalized,
    }


def ensure_qdrant_collection(
    client: Any, name: str, space: Space, sparse: bool = False, allow_cross_space: bool = False
) -> None:
    """Create the collection for vectors of `space`, or check that the one there holds
    that space (its points carry their space id).

    Raises:
        SpaceMismatch: the collection holds vectors of another space.
        ValueError: it has no sparse vector where `sparse` is asked for.
    """
    from qdrant_client import models

    if not client.collection_exists(name):
        client.create_collection(
            name,
            vectors_config={
                DENSE_VECTOR: models.VectorParams(
                    size=space.dimensions, distance=models.Distance.COSINE
                )
            },
            # Lexical weights are scored by dot product, Qdrant's only sparse metric.
            sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams()} if sparse else None,
        )
        return
    _collection_guard(client, name, allow_cross_space).check(
        space.space_id, f"vectors for Qdrant collection {name}"
    )
    sparse_config = client.get_collection(name).config.params.sparse_vectors or {}
    if sparse and SPARSE_VECTOR not in sparse_config:
        raise ValueError(
            f"Qdrant collection {name} has no sparse vector {SPARSE_VECTOR!r}; use another "
            "collection for vectors with sparse ones"
        )


def _collection_guard(client: Any, name: str, allow_cross_space: bool) -> SpaceGuard:
    """The guard of the space a collection's points carry (an empty one takes any)."""
    points, _ = client.scroll(name, limit=1, with_payload=True)
    if not points:
        return SpaceGuard("", allow_cross_space=True)
    return SpaceGuard(points[0].payload.get("space_id"), allow_cross_space)


class QdrantIndex:
    """A Qdrant collection of one space: `upsert` and `search` refuse vectors of another
    space than the collection's (the space id every point carries), unless opted in."""

    def __init__(self, client: Any, collection: str, allow_cross_space: bool = False) -> None:
        self.client = client
        self.collection = collection
        self.allow_cross_space = allow_cross_space

    def upsert(self, embeddings: StampedVectors, ids: Sequence[str]) -> None:
        """Write vectors under `ids` (creating the collection for their space).

        Raises:
            SpaceMismatch: the collection holds another space (nothing is written).
        """
        from qdrant_client import models

        ensure_qdrant_collection(
            self.client, self.collection, embeddings, allow_cross_space=self.allow_cross_space
        )
        points = [
            models.PointStruct(
                id=point_id(row_id),
                vector={DENSE_VECTOR: row.tolist()},
                payload=qdrant_payload(row_id, embeddings),
            )
            for row_id, row in zip(ids, _float32(embeddings.vectors), strict=True)
        ]
        self.client.upsert(self.collection, points=points)

    def search(self, query: StampedVectors, k: int = 10) -> list[list[tuple[str, float]]]:
        """The `k` nearest ids and scores of each query vector.

        Raises:
            SpaceMismatch: the queries are of another space than the collection's.
        """
        guard = _collection_guard(self.client, self.collection, self.allow_cross_space)
        guard.check(query.space_id, "query vectors")
        return [
            [
                (hit.payload["id"], float(hit.score))
                for hit in self.client.query_points(
                    self.collection, query=row.tolist(), using=DENSE_VECTOR, limit=k
                ).points
            ]
            for row in _float32(query.vectors)
        ]
