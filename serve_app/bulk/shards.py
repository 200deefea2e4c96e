"""The output folder's Parquet shards: vectors in `data/`, rejected rows in `errors/`.

Every shard is written to a hidden temporary file and renamed into place, so a killed
job leaves only whole shards (and temporaries, removed when the job resumes). A shard's
name is a hash of the ids it holds: a retried batch rewrites the same file with the same
rows, and a shard with other rows can never overwrite it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedserve.backend import SparseVector
from embedserve.bulk.manifest import SpaceInfo

if TYPE_CHECKING:
    import pyarrow as pa

DATA_DIR = "data"
ERRORS_DIR = "errors"
ERRORS_FILE = "errors.jsonl"
# The errors shard of the rows that repeat an earlier row's id: named apart, as its ids
# may be those of another shard (a first row that fails), and rewritten by every run.
REPEATED_IDS_SHARD = "part-repeated-ids.parquet"
SPARSE_COLUMN = "sparse"
_TEMPORARY_SUFFIX = ".tmp"


def shard_name(ids: Sequence[str | None]) -> str:
    """A shard's file name, derived from the ids it holds (in order)."""
    digest = hashlib.sha256("\0".join(i or "" for i in ids).encode()).hexdigest()
    return f"part-{digest[:32]}.parquet"


def write_shard(table: pa.Table, folder: Path, name: str | None = None) -> Path:
    """Write `table` as one shard of `folder`, atomically; returns its path.

    Args:
        table: the shard's rows.
        folder: `data/` or `errors/` of an output.
        name: the shard's file name (`part-*.parquet`); default: `shard_name` of its ids.
    """
    import pyarrow.parquet as pq

    path = folder / (name or shard_name(table.column("id").to_pylist()))
    temporary = folder / f".{path.name}.{uuid.uuid4().hex}{_TEMPORARY_SUFFIX}"
    pq.write_table(table, temporary)
    os.replace(temporary, path)
    return path


def prepare_folders(output: Path) -> None:
    """Create the shard folders and delete temporaries a killed run left behind."""
    for name in (DATA_DIR, ERRORS_DIR):
        folder = output / name
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(f".*{_TEMPORARY_SUFFIX}"):
            leftover.unlink()


def committed_shards(output: Path, kind: str = DATA_DIR) -> list[str]:
    """The whole shards of one kind (`data` or `errors`) in an output folder."""
    folder = output / kind
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.glob("part-*.parquet"))


def iter_shard_tables(
    shards: Sequence[str], columns: list[str] | None = None
) -> Iterator[pa.Table]:
    """The shards' tables one at a time, so memory holds one shard, not the output."""
    import pyarrow.parquet as pq

    for shard in shards:
        yield pq.read_table(shard, columns=columns)


def shard_ids(shards: Sequence[str]) -> pa.ChunkedArray:
    """Every id in the shards, as one Arrow column (compact: no Python strings)."""
    import pyarrow as pa

    chunks = [chunk for t in iter_shard_tables(shards, ["id"]) for chunk in t["id"].chunks]
    return pa.chunked_array(chunks, type=pa.string())


def data_table(
    ids: Sequence[str],
    vectors: np.ndarray,
    space: SpaceInfo,
    sparse: Sequence[SparseVector] | None = None,
) -> pa.Table:
    """Rows of vectors with the per-row space metadata (`embedding` is a fixed-size list),
    and their sparse vectors when given (a `sparse` column, see `sparse_array`)."""
    import pyarrow as pa

    n = len(ids)
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel(), pa.float32())
    columns = {
        "id": pa.array(ids, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, space.dimensions),
    }
    if sparse is not None:
        columns[SPARSE_COLUMN] = sparse_array(sparse)
    return pa.table(
        {
            **columns,
            "model": pa.array([space.model] * n, pa.string()),
            "backend": pa.array([space.backend] * n, pa.string()),
            "space_id": pa.array([space.space_id] * n, pa.string()),
            "dimensions": pa.array([space.dimensions] * n, pa.int32()),
            "normalized": pa.array([space.normalized] * n, pa.bool_()),
        }
    )


def sparse_array(vectors: Sequence[SparseVector]) -> pa.StructArray:
    """Sparse vectors as one Arrow column: a struct of `indices` (list<int32>, vocabulary
    ids, ascending) and `values` (list<float32>, their weights), as Qdrant takes them."""
    import pyarrow as pa

    lengths = np.fromiter((len(v.indices) for v in vectors), np.int32, len(vectors))
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32), pa.int32())
    indices = np.concatenate([v.indices for v in vectors] or [np.empty(0)]).astype(np.int32)
    values = np.concatenate([v.values for v in vectors] or [np.empty(0)]).astype(np.float32)
    return pa.StructArray.from_arrays(
        [
            pa.ListArray.from_arrays(offsets, pa.array(indices, pa.int32())),
            pa.ListArray.from_arrays(offsets, pa.array(values, pa.float32())),
        ],
        names=["indices", "values"],
    )


def shard_sparse(table: pa.Table) -> list[SparseVector]:
    """The `sparse` column of a shard as sparse vectors."""
    column = table.column(SPARSE_COLUMN).combine_chunks()
    return [
        SparseVector(
            indices=np.asarray(row["indices"], dtype=np.int64),
            values=np.asarray(row["values"], dtype=np.float32),
        )
        for row in column.to_pylist()
    ]


def arrow_compute() -> Any:
    """`pyarrow.compute`, imported on use; typed `Any` because pyarrow generates its
    functions when it is imported, where static type checkers cannot see them."""
    import pyarrow.compute

    return pyarrow.compute


def errors_table(ids: Sequence[str | None], reasons: Sequence[str]) -> pa.Table:
    """Rows that could not be embedded, with the reason."""
    import pyarrow as pa

    return pa.table({"id": pa.array(ids, pa.string()), "reason": pa.array(reasons, pa.string())})


def shard_vectors(table: pa.Table) -> np.ndarray:
    """The `embedding` column of a shard as a 2-D float32 array (no copy per row)."""
    column = table.column("embedding").combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
