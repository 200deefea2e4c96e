"""MiniLM through a bulk job gives the live server's vectors; re-encoding to another
space keeps every id; the FAISS and Qdrant sinks find a text's own id."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from embedserve.bulk.job import run_job
from embedserve.bulk.reencode import REPORT_FILE
from embedserve.bulk.sinks import qdrant_client
from embedserve.bulk.spec import InputSpec, JobSpec, QdrantSpec
from embedserve.cli.main import main
from embedserve.config import load_config
from embedserve.indexes import DENSE_VECTOR, FAISS_IDS, FAISS_INDEX, FaissIndex
from embedserve.space import SpaceMismatch
from tests.bulk.conftest import output_vectors, write_jsonl
from tests.integration.conftest import free_port
from tests.texts import paragraphs

pytestmark = [pytest.mark.integration, pytest.mark.models]
# What a job's console shows: the command's lines, then the job's own.
OWN_RAY_ECHO = re.compile(r"(\x1b\[\d+m)?\((raylet|[\w.:-]+ pid=\d+)[^)]*\)")
JOB_CONSOLE = re.compile(
    r"(submitted encode job |encoding |space |progress |done: |job \S+ SUCCEEDED$)"
)
TEXTS = paragraphs(40, min_chars=80, max_chars=400)


def _live_vectors(texts: list[str]) -> np.ndarray:
    """The default app's answer for `texts`, deployed on Serve in this Ray, then removed."""
    from ray import serve

    from embedserve.deployments.app import APP_NAME, build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(load_config(None)), name=APP_NAME, route_prefix="/")
        body = {"model": "all-minilm-l6-v2", "input": texts}
        response = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json=body, timeout=300)
        response.raise_for_status()
        return np.array([item["embedding"] for item in response.json()["data"]])
    finally:
        serve.shutdown()  # frees MiniLM's two CPUs for the bulk job


def test_minilm_bulk_vectors_equal_the_servers_and_reencode_keeps_every_id(
    dashboard: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = _live_vectors(TEXTS)
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    old = tmp_path / "minilm"
    args = ["encode", str(corpus), "--model", "all-minilm-l6-v2", "--output", str(old)]
    assert main([*args, "--batch-size", "16", "--address", dashboard, "--wait"]) == 0
    # The job's console had Ray's INFO lines, a core_worker.cc error about constructor
    # arguments and the encoders' "Loading weights" bars among its progress lines.
    # (This process is a Ray driver too: lines its Ray echoes, prefixed `(raylet)` or
    # `(<actor> pid=...)`, are not the command's.)
    console = capsys.readouterr().out.splitlines()
    stray = [line for line in console if not JOB_CONSOLE.match(line)]
    assert [line for line in stray if not OWN_RAY_ECHO.match(line)] == []
    vectors = output_vectors(old)
    assert len(vectors) == len(TEXTS)
    for i, expected in enumerate(live):
        cosine = vectors[str(i)] @ expected / np.linalg.norm(expected)
        assert cosine >= 0.9999, (i, cosine)
    space = load_config(None).space_id("minilm")
    assert set(pq.read_table(old / "data").column("space_id").to_pylist()) == {space}

    reencode = ["reencode", str(old), "--model", "hash", "--source", str(corpus)]
    assert main([*reencode, "--address", dashboard, "--wait"]) == 0
    assert "0 missing" in capsys.readouterr().out
    new = old.with_name(f"minilm.{load_config(None).space_id('hash')}")
    assert sorted(output_vectors(new)) == sorted(vectors)
    report = json.loads((new / REPORT_FILE).read_text())
    assert report["complete"] and report["missing"] == 0
    assert report["old"]["space_id"] == space != report["new"]["space_id"]
    assert len(output_vectors(old)) == len(TEXTS)  # the old space is kept beside the new


def test_faiss_and_qdrant_sinks_find_a_texts_own_id(dashboard: str, tmp_path: Path) -> None:
    texts = paragraphs(60, min_chars=80, max_chars=400)
    corpus = write_jsonl(
        tmp_path / "c.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]
    )
    qdrant = QdrantSpec(location=str(tmp_path / "qdrant"), collection="docs")
    spec = JobSpec(
        input=InputSpec(path=str(corpus), format="jsonl"),
        output=str(tmp_path / "out"),
        model="hash",
        batch_size=25,
        faiss="Flat",
        qdrant=qdrant,
    )
    manifest = run_job(spec, log=lambda line: None)
    assert manifest.sinks["faiss"]["vectors"] == manifest.sinks["qdrant"]["points"] == 60
    query = output_vectors(Path(spec.output))["d17"]

    import faiss

    index = faiss.read_index(str(Path(spec.output) / FAISS_INDEX))
    ids = pq.read_table(Path(spec.output) / FAISS_IDS).column("id").to_pylist()
    _, labels = index.search(query[None, :], 1)
    assert ids[labels[0][0]] == "d17"
    # The same index through the client's helper: bound to the job's space.
    guarded = FaissIndex.load(spec.output)
    stamped = SimpleNamespace(space_id=manifest.space.space_id, vectors=query[None, :])
    assert guarded.search(stamped, k=1)[0][0][0] == "d17"
    with pytest.raises(SpaceMismatch):
        guarded.add(SimpleNamespace(space_id="other-space", vectors=query[None, :]), ["x"])

    client = qdrant_client(qdrant.location)
    try:
        hits = client.query_points("docs", query=query.tolist(), using=DENSE_VECTOR, limit=1)
        payload = hits.points[0].payload
    finally:
        client.close()
    assert payload["id"] == "d17"
    assert payload["space_id"] == manifest.space.space_id
