"""The official OpenAI Python SDK (`openai`) against the served app."""

from __future__ import annotations

import numpy as np
import pytest
from openai import OpenAI

from tests.clients.conftest import (
    KEY,
    MINILM,
    TEXTS,
    TINY,
    TINY_SIZES,
    assert_same_vectors,
    from_base64,
    recording_http_client,
)

pytestmark = [pytest.mark.clients, pytest.mark.integration]


def sdk(url: str, key: str = KEY, **options) -> OpenAI:
    # max_retries=0: the SDK would otherwise wait out a 429's Retry-After (up to 60 s)
    # and try again.
    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, **options)


def test_a_batch_of_100_texts_in_the_sdks_default_base64(url: str, texts_reference) -> None:
    http_client, sent = recording_http_client()
    response = sdk(url, http_client=http_client).embeddings.create(model=MINILM, input=TEXTS)
    # Without an encoding_format the SDK asks for base64 and decodes it itself.
    assert [body["encoding_format"] for body in sent] == ["base64"]
    assert [item.index for item in response.data] == list(range(100))
    assert_same_vectors([item.embedding for item in response.data], texts_reference)
    assert response.model == MINILM
    assert response.model_extra["dimensions"] == 384
    assert response.model_extra["backend"] == "minilm"


def test_an_over_long_text_is_truncated_to_its_first_256_tokens(
    url: str, long_text, long_reference
) -> None:
    response = sdk(url).embeddings.create(model=MINILM, input=long_text[0])
    assert_same_vectors([response.data[0].embedding], long_reference[None])
    assert response.usage.prompt_tokens == 256
    assert response.usage.model_extra["truncated_tokens"] > 0


def test_base64_asked_for_explicitly_is_left_to_the_caller(url: str, texts_reference) -> None:
    response = sdk(url).embeddings.create(model=MINILM, input=TEXTS[:8], encoding_format="base64")
    assert all(isinstance(item.embedding, str) for item in response.data)
    decoded = np.stack([from_base64(item.embedding) for item in response.data])
    assert_same_vectors(decoded, texts_reference[:8])


@pytest.mark.parametrize("size", TINY_SIZES)
def test_dimensions_on_a_matryoshka_model(url: str, size: int, tiny_reference) -> None:
    response = sdk(url).embeddings.create(model=TINY, input=TEXTS[:8], dimensions=size)
    assert_same_vectors([item.embedding for item in response.data], tiny_reference[size])
    assert response.model_extra["dimensions"] == size
    assert response.model_extra["space_id"].endswith(f"/d{size}")
