"""The `bge-m3` backend on a tiny XLM-RoBERTa with random heads, loaded through the
backend's real loading code; each output is checked against a reference computed here
from the encoder's states and the head weights."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from embedserve import EmbedInput, OutputKind
from embedserve.plugins.bge_m3_backend import BgeM3Backend
from tests.models.tiny import build_bge_m3

pytestmark = pytest.mark.models

ALL = (OutputKind.DENSE, OutputKind.SPARSE, OutputKind.MULTIVECTOR)
TEXTS = ["the cat sat on the mat, the cat", "vector search", "a b c d e f g h i j k"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return build_bge_m3(tmp_path_factory.mktemp("bge-m3"), colbert_dim=16)


@pytest.fixture(scope="module")
def backend(folder: Path) -> BgeM3Backend:
    backend = BgeM3Backend({"model": str(folder), "device": "cpu"})
    backend.load()
    return backend


def token_states(folder: Path, text: str) -> tuple[list[int], np.ndarray]:
    """Token ids and last hidden states of one text, run alone (no padding)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    encoded = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        states = model(
            input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
        ).last_hidden_state
    return encoded["input_ids"][0].tolist(), states[0].numpy()


def head(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    import torch

    state = torch.load(folder / name, weights_only=True)
    return state["weight"].numpy(), state["bias"].numpy()


def reference_sparse(folder: Path, text: str) -> dict[int, float]:
    """BGE-M3's lexical weights: relu(W h + b) per token, max per id, specials dropped."""
    from transformers import AutoTokenizer

    ids, states = token_states(folder, text)
    weight, bias = head(folder, "sparse_linear.pt")
    special = set(AutoTokenizer.from_pretrained(folder).all_special_ids)
    result: dict[int, float] = {}
    for token, state in zip(ids, states, strict=True):
        value = max(0.0, float(state @ weight[0] + bias[0]))
        if token not in special and value > 0:
            result[token] = max(result.get(token, 0.0), value)
    return result


def test_dense_is_the_normalised_cls_state(backend: BgeM3Backend, folder: Path) -> None:
    batch = backend.embed_batch([EmbedInput(text) for text in TEXTS])
    assert batch.dense.shape == (3, 32) and backend.capabilities.dimensions == 32
    for row, text in enumerate(TEXTS):
        cls = token_states(folder, text)[1][0]
        assert np.allclose(batch.dense[row], cls / np.linalg.norm(cls), atol=1e-5)
    assert batch.sparse == [None] * 3 and batch.multivector == [None] * 3  # not asked for


def test_sparse_weights_equal_the_reference(backend: BgeM3Backend, folder: Path) -> None:
    batch = backend.embed_batch([EmbedInput(text, outputs=ALL) for text in TEXTS])
    for row, text in enumerate(TEXTS):
        expected = reference_sparse(folder, text)
        vector = batch.sparse[row]
        assert vector.indices.tolist() == sorted(expected)
        assert np.allclose(vector.values, [expected[i] for i in sorted(expected)], atol=1e-5)
        assert len(vector.tokens) == len(vector.indices) and "[CLS]" not in vector.tokens


def test_multivectors_are_normalised_colbert_states_after_cls(
    backend: BgeM3Backend, folder: Path
) -> None:
    batch = backend.embed_batch([EmbedInput(text, outputs=ALL) for text in TEXTS])
    weight, bias = head(folder, "colbert_linear.pt")
    for row, text in enumerate(TEXTS):
        ids, states = token_states(folder, text)
        vectors = batch.multivector[row]
        assert vectors.shape == (len(ids) - 1, 16)  # every token but [CLS]; padding cut off
        expected = states[1:] @ weight.T + bias
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        assert np.allclose(vectors, expected, atol=1e-5)


def test_token_counts_and_limit(backend: BgeM3Backend) -> None:
    assert backend.capabilities.max_input_tokens == 128
    assert backend.count_tokens([EmbedInput("vector search")]) == [4]


def test_a_missing_head_file_fails_the_load(folder: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bge"
    shutil.copytree(folder, copy)
    (copy / "colbert_linear.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"colbert_linear\.pt"):
        BgeM3Backend({"model": str(copy)}).load()


BGE_M3_FOLDER = os.environ.get("EMBEDSERVE_BGE_M3_MODEL")


@pytest.mark.skipif(not BGE_M3_FOLDER, reason="set EMBEDSERVE_BGE_M3_MODEL to a BGE-M3 folder")
def test_real_bge_m3_ranks_the_relevant_passage_first() -> None:
    backend = BgeM3Backend({"model": BGE_M3_FOLDER})
    backend.load()
    query = "What is the capital of France?"
    passages = [
        "Paris is the capital and largest city of France.",
        "Photosynthesis converts light energy into chemical energy.",
        "The Great Wall of China is visible from many places.",
    ]
    batch = backend.embed_batch([EmbedInput(t, outputs=ALL) for t in [query, *passages]])
    assert int(np.argmax(batch.dense[1:] @ batch.dense[0])) == 0
    q = dict(zip(batch.sparse[0].indices.tolist(), batch.sparse[0].values.tolist(), strict=True))
    lexical = [
        sum(q.get(i, 0.0) * v for i, v in zip(s.indices.tolist(), s.values.tolist(), strict=True))
        for s in batch.sparse[1:]
    ]
    assert int(np.argmax(lexical)) == 0


def test_the_token_budget_reads_the_loaded_text_model(backend) -> None:
    from embedserve.plugins.model_files import CPU_TOKEN_BUDGET, TransformerShape

    assert backend.token_budget(0.25) == CPU_TOKEN_BUDGET  # on the CPU here
    # On a GPU the budget comes from this shape: the text model's config must give one.
    assert TransformerShape.of(backend._text_model().config) is not None
