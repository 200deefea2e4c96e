"""Encoding jobs run in this process against the local Ray: inputs, metadata, errors,
deduplication, and the checks that refuse to start."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedserve import EmbedInput
from embedserve.bulk.job import JobStartError, run_job
from embedserve.bulk.pipeline import EMPTY_TEXT, NON_FINITE
from embedserve.bulk.spec import InputSpec, JobSpec
from embedserve.config import load_config
from tests.bulk.conftest import output_errors, output_vectors, write_jsonl
from tests.texts import paragraphs

pytestmark = pytest.mark.integration
TEXTS = paragraphs(120, min_chars=40, max_chars=300)


def _spec(tmp_path: Path, path: Path, fmt: str, **fields: object) -> JobSpec:
    input_spec = InputSpec(path=str(path), format=fmt, **fields.pop("columns", {}))
    defaults = {"output": str(tmp_path / "out"), "model": "hash", "batch_size": 50}
    return JobSpec(input=input_spec, **{**defaults, **fields})


def _hash_vectors(texts: list[str]) -> np.ndarray:
    backend = load_config(None).backend("hash")
    return backend.embed_batch([EmbedInput(t) for t in texts]).dense


def test_jsonl_rows_get_vectors_and_their_space_metadata(dashboard: str, tmp_path: Path) -> None:
    rows = [{"id": i, "text": text} for i, text in enumerate(TEXTS)]
    spec = _spec(tmp_path, write_jsonl(tmp_path / "corpus.jsonl", rows), "jsonl")
    manifest = run_job(spec, log=lambda line: None)
    output = Path(spec.output)
    vectors = output_vectors(output)
    assert sorted(vectors) == sorted(str(i) for i in range(len(TEXTS)))
    expected = _hash_vectors(TEXTS)
    for i in range(len(TEXTS)):
        np.testing.assert_allclose(vectors[str(i)], expected[i], rtol=1e-6)
    table = pq.read_table(output / "data")
    space_id = load_config(None).space_id("hash")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert set(table.column("space_id").to_pylist()) == {space_id}
    assert set(table.column("model").to_pylist()) == {"hash"}
    assert set(table.column("backend").to_pylist()) == {"hash"}
    assert set(table.column("dimensions").to_pylist()) == {384}
    assert set(table.column("normalized").to_pylist()) == {True}
    on_disk = json.loads((output / "manifest.json").read_text())
    assert on_disk["status"] == "complete"
    assert on_disk["space"]["space_id"] == space_id
    assert on_disk["counts"]["embedded"] == len(TEXTS) == manifest.counts.input_rows
    assert len(on_disk["config_sha256"]) == 64


def test_parquet_and_csv_inputs_with_other_column_names(dashboard: str, tmp_path: Path) -> None:
    ids = [f"doc-{i:03d}" for i in range(len(TEXTS))]
    table = pa.table({"key": ids, "body": TEXTS, "extra": list(range(len(TEXTS)))})
    pq.write_table(table, tmp_path / "corpus.parquet", row_group_size=40)
    csv_ids = [f"00{i}" for i in range(10)]  # leading zeros must survive
    with (tmp_path / "corpus.csv").open("w", newline="") as stream:
        csv.writer(stream).writerows([("key", "body"), *zip(csv_ids, TEXTS, strict=False)])
    columns = {"id_column": "key", "text_column": "body"}
    for name, fmt, expected_ids in (
        ("parquet", "parquet", ids),
        ("csv", "csv", csv_ids),
    ):
        spec = _spec(tmp_path / name, tmp_path / f"corpus.{name}", fmt, columns=columns)
        run_job(spec, log=lambda line: None)
        assert sorted(output_vectors(Path(spec.output))) == sorted(expected_ids)


def test_bad_rows_go_to_the_errors_file(dashboard: str, tmp_path: Path, fault_config: str) -> None:
    rows = [{"id": i, "text": t} for i, t in enumerate(TEXTS[:20])]
    rows[3]["text"] = ""
    rows[7]["text"] = None
    spec = _spec(
        tmp_path, write_jsonl(tmp_path / "c.jsonl", rows), "jsonl", model="nan", config=fault_config
    )
    manifest = run_job(spec, log=lambda line: None)
    errors = output_errors(Path(spec.output))
    vectors = output_vectors(Path(spec.output))
    assert errors["3"] == errors["7"] == EMPTY_TEXT
    # The `nan` backend answers its first batch (4 texts) well and NaN after it.
    assert len(vectors) == 4
    assert {reason for i, reason in errors.items() if i not in {"3", "7"}} == {NON_FINITE}
    assert len(errors) + len(vectors) == 20 == manifest.counts.distinct_ids
    assert manifest.counts.errors == 16


def test_identical_texts_are_embedded_once(dashboard: str, tmp_path: Path) -> None:
    rows = [{"id": i, "text": TEXTS[i % 5]} for i in range(60)]
    spec = _spec(tmp_path, write_jsonl(tmp_path / "c.jsonl", rows), "jsonl")
    manifest = run_job(spec, log=lambda line: None)
    vectors = output_vectors(Path(spec.output))
    assert len(vectors) == 60
    assert manifest.counts.texts_embedded == 5
    np.testing.assert_array_equal(vectors["0"], vectors["55"])


def test_a_backend_that_cannot_load_fails_the_job_at_start(
    dashboard: str, tmp_path: Path, fault_config: str
) -> None:
    rows = [{"id": 1, "text": "hello"}]
    spec = _spec(
        tmp_path,
        write_jsonl(tmp_path / "c.jsonl", rows),
        "jsonl",
        model="broken",
        config=fault_config,
    )
    with pytest.raises(
        JobStartError,
        match=r"backend broken \(faulty-hash\) is unavailable: "
        "faulty-hash was configured to be unavailable",
    ):
        run_job(spec, log=lambda line: None)
    assert not Path(spec.output).exists()


def test_an_output_never_mixes_spaces(dashboard: str, tmp_path: Path, fault_config: str) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": 1, "text": "hello"}])
    run_job(_spec(tmp_path, corpus, "jsonl"), log=lambda line: None)
    other = _spec(tmp_path, corpus, "jsonl", model="hash64", config=fault_config)
    with pytest.raises(JobStartError, match=r"cannot resume into .* holds vectors of space hash-"):
        run_job(other, log=lambda line: None)


def test_a_missing_column_fails_before_any_work(dashboard: str, tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": 1, "body": "hello"}])
    with pytest.raises(ValueError, match=re.escape("no text column 'text' (columns: id, body)")):
        run_job(_spec(tmp_path, corpus, "jsonl"), log=lambda line: None)


def test_repeated_ids_are_errors_and_each_ids_first_row_is_kept(
    dashboard: str, tmp_path: Path
) -> None:
    rows = [{"id": i, "text": TEXTS[i]} for i in range(60)]
    rows[7] = {"id": 5, "text": "a later row with the id of row 6"}  # in row 6's batch
    rows[45] = {"id": 12, "text": TEXTS[12]}  # another batch, and the same text
    rows[50] = {"id": 12, "text": "a third row with id 12"}
    spec = _spec(tmp_path, write_jsonl(tmp_path / "c.jsonl", rows), "jsonl", batch_size=20)
    manifest = run_job(spec.model_copy(update={"faiss": "Flat"}), log=lambda line: None)

    output = Path(spec.output)
    vectors = output_vectors(output)  # fails on an id with two vectors
    assert sorted(vectors, key=int) == sorted({str(row["id"]) for row in rows}, key=int)
    expected = _hash_vectors([TEXTS[5], TEXTS[12]])
    np.testing.assert_allclose(vectors["5"], expected[0], rtol=1e-6)  # the first row's
    np.testing.assert_allclose(vectors["12"], expected[1], rtol=1e-6)
    reasons = [json.loads(line) for line in (output / "errors.jsonl").read_text().splitlines()]
    assert sorted((row["id"], row["reason"]) for row in reasons) == [
        ("12", "duplicate id: row 46 of c.jsonl repeats the id of row 13 of c.jsonl, the row kept"),
        ("12", "duplicate id: row 51 of c.jsonl repeats the id of row 13 of c.jsonl, the row kept"),
        ("5", "duplicate id: row 8 of c.jsonl repeats the id of row 6 of c.jsonl, the row kept"),
    ]
    counts = manifest.counts
    assert manifest.status == "complete"
    assert (counts.input_rows, counts.embedded, counts.errors) == (60, 57, 3)
    assert (counts.repeated_ids, counts.distinct_ids) == (3, 57)
    assert manifest.sinks["faiss"]["vectors"] == 57
    assert json.loads((output / "manifest.json").read_text())["status"] == "complete"

    # A second run finds every row done, and reports the repeats once.
    again = run_job(spec.model_copy(update={"faiss": "Flat"}), log=lambda line: None)
    assert again.counts == counts
