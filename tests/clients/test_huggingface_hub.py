"""huggingface_hub's `InferenceClient(base_url).feature_extraction(...)` against the TEI
routes of the served app (the model is the `X-Embedding-Model` header, else
`server.tei_default_model`: MiniLM, the bundled config's first model). Errors are
`HfHubHTTPError` (`BadRequestError` for 400) with TEI's error body on `.response`
(tests/clients/test_errors.py)."""

from __future__ import annotations

import pytest
from huggingface_hub import InferenceClient

from tests.clients.conftest import (
    KEY,
    TEXTS,
    TINY,
    TINY_SIZES,
    assert_same_vectors,
)

pytestmark = [pytest.mark.clients, pytest.mark.integration]


def client(url: str, key: str = KEY, model: str | None = None) -> InferenceClient:
    headers = {"X-Embedding-Model": model} if model else None
    return InferenceClient(base_url=url, api_key=key, headers=headers)


def test_a_batch_of_100_texts(url: str, texts_reference) -> None:
    vectors = client(url).feature_extraction(TEXTS)
    assert vectors.dtype == "float32"
    assert_same_vectors(vectors, texts_reference)
    assert_same_vectors(client(url).feature_extraction(TEXTS[0]), texts_reference[:1])


def test_an_over_long_text_is_truncated_to_its_first_256_tokens(
    url: str, long_text, long_reference
) -> None:
    vector = client(url).feature_extraction(long_text[0])  # server.truncate: true
    assert_same_vectors(vector, long_reference[None])
    asked = client(url).feature_extraction(long_text[0], truncate=True)
    assert_same_vectors(asked, long_reference[None])


def test_encoding_format_is_ignored_as_tei_ignores_unknown_fields(
    url: str, texts_reference
) -> None:
    """TEI's API has no base64: the client sends its `encoding_format` anyway, and gets
    the float vectors it parses."""
    vectors = client(url).feature_extraction(TEXTS[:8], encoding_format="base64")
    assert_same_vectors(vectors, texts_reference[:8])


@pytest.mark.parametrize("size", TINY_SIZES)
def test_dimensions_on_a_matryoshka_model(url: str, size: int, tiny_reference) -> None:
    vectors = client(url, model=TINY).feature_extraction(TEXTS[:8], dimensions=size)
    assert_same_vectors(vectors, tiny_reference[size])
