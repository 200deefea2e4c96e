"""Sparse output: a tiny BGE-M3 (built from a config, loaded by the `bge-m3` backend's
real loading code) writes a `sparse` column beside `embedding`, equal to the backend's
own lexical weights, and the Qdrant sink finds a text by its sparse vector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from embedserve import EmbedInput, OutputKind, SparseVector
from embedserve.bulk.job import JobStartError, run_job
from embedserve.bulk.shards import DATA_DIR, committed_shards, iter_shard_tables, shard_sparse
from embedserve.bulk.sinks import qdrant_client
from embedserve.bulk.spec import InputSpec, JobSpec, QdrantSpec
from embedserve.indexes import SPARSE_VECTOR
from embedserve.plugins.bge_m3_backend import BgeM3Backend
from tests.bulk.conftest import output_vectors, write_jsonl
from tests.models.tiny import build_bge_m3
from tests.texts import paragraphs

pytestmark = [pytest.mark.integration, pytest.mark.models]
TEXTS = paragraphs(30, min_chars=40, max_chars=300)


@pytest.fixture(scope="module")
def tiny_m3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BGE-M3 model folder."""
    return build_bge_m3(tmp_path_factory.mktemp("tiny-bge-m3"), colbert_dim=16)


def _config(folder: Path, tmp_path: Path) -> str:
    backend = {"kind": "bge-m3", "options": {"model": str(folder), "device": "cpu"}}
    config = {
        "backends": {"tiny-m3": {**backend, "resources": {"num_cpus": 0}}},
        "models": {"tiny-m3": {"chain": ["tiny-m3"]}},
    }
    path = tmp_path / "m3.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _reference(folder: Path) -> tuple[np.ndarray, list[SparseVector]]:
    backend = BgeM3Backend({"model": str(folder), "device": "cpu"})
    backend.load()
    outputs = (OutputKind.DENSE, OutputKind.SPARSE)
    batch = backend.embed_batch([EmbedInput(text, outputs=outputs) for text in TEXTS])
    return batch.dense, batch.sparse


def _output_sparse(output: Path) -> dict[str, SparseVector]:
    found: dict[str, SparseVector] = {}
    for table in iter_shard_tables(committed_shards(output, DATA_DIR)):
        found.update(zip(table.column("id").to_pylist(), shard_sparse(table), strict=True))
    return found


def _weights(vector: SparseVector) -> dict[int, float]:
    """Token id -> weight, without the weights too small to tell from rounding."""
    pairs = zip(vector.indices.tolist(), vector.values.tolist(), strict=True)
    return {index: value for index, value in pairs if value > 1e-4}


def test_sparse_vectors_are_written_and_the_qdrant_sink_finds_them(
    dashboard: str, tmp_path: Path, tiny_m3: Path
) -> None:
    rows = [{"id": f"d{i}", "text": text} for i, text in enumerate(TEXTS)]
    qdrant = QdrantSpec(location=str(tmp_path / "qdrant"), collection="docs")
    spec = JobSpec(
        input=InputSpec(path=str(write_jsonl(tmp_path / "c.jsonl", rows)), format="jsonl"),
        output=str(tmp_path / "out"),
        model="tiny-m3",
        config=_config(tiny_m3, tmp_path),
        batch_size=12,
        sparse=True,
        qdrant=qdrant,
    )
    manifest = run_job(spec, log=lambda line: None)
    assert manifest.sparse and manifest.counts.embedded == len(TEXTS)
    output = Path(spec.output)
    schema = pq.read_schema(committed_shards(output, DATA_DIR)[0])
    assert schema.field("sparse").type == pa.struct(
        [("indices", pa.list_(pa.int32())), ("values", pa.list_(pa.float32()))]
    )
    dense, sparse = _reference(tiny_m3)
    vectors, written = output_vectors(output), _output_sparse(output)
    for i in range(len(TEXTS)):
        np.testing.assert_allclose(vectors[f"d{i}"], dense[i], atol=1e-5)
        expected, got = _weights(sparse[i]), _weights(written[f"d{i}"])
        assert expected and got.keys() == expected.keys(), i
        np.testing.assert_allclose(list(got.values()), list(expected.values()), atol=1e-5)

    from qdrant_client import models

    query = written["d11"]
    client = qdrant_client(qdrant.location)
    try:
        hits = client.query_points(
            "docs",
            query=models.SparseVector(indices=query.indices.tolist(), values=query.values.tolist()),
            using=SPARSE_VECTOR,
            limit=1,
        )
    finally:
        client.close()
    assert hits.points[0].payload["id"] == "d11"


def test_sparse_output_from_a_dense_only_backend_fails_at_start(tmp_path: Path) -> None:
    spec = JobSpec(
        input=InputSpec(path=str(tmp_path / "c.jsonl"), format="jsonl"),
        output=str(tmp_path / "out"),
        model="hash",
        sparse=True,
    )
    with pytest.raises(JobStartError, match=r"backend hash \(hash\) has no sparse output"):
        run_job(spec, log=lambda line: None)
    assert not (tmp_path / "out").exists()
