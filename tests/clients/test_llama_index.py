"""llama-index's `OpenAILikeEmbedding` (llama-index-embeddings-openai-like) against the
served app. It calls the OpenAI SDK, in batches of `embed_batch_size` (10), and raises
the SDK's exceptions once its own retries (tenacity, on 429 and 5xx) are spent."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.embeddings.openai_like import OpenAILikeEmbedding

from tests.clients.conftest import (
    KEY,
    MINILM,
    TEXTS,
    TINY,
    TINY_SIZES,
    assert_same_vectors,
    recording_http_client,
)

pytestmark = [pytest.mark.clients, pytest.mark.integration]


def embedding(url: str, model: str = MINILM, key: str = KEY, **options: Any) -> OpenAILikeEmbedding:
    # max_retries=0: one attempt (the default, 10, waits out a 429 for up to a minute).
    return OpenAILikeEmbedding(
        model_name=model, api_base=f"{url}/v1", api_key=key, max_retries=0, **options
    )


def test_a_batch_of_100_texts(url: str, texts_reference) -> None:
    http_client, sent = recording_http_client()
    client = embedding(url, http_client=http_client)
    assert_same_vectors(client.get_text_embedding_batch(TEXTS), texts_reference)
    assert_same_vectors([client.get_query_embedding(TEXTS[0])], texts_reference[:1])
    assert [len(body["input"]) for body in sent] == [10] * 10 + [1]
    # The SDK's default base64 on the wire, decoded by the SDK.
    assert {body["encoding_format"] for body in sent} == {"base64"}


def test_an_over_long_text_is_truncated_to_its_first_256_tokens(
    url: str, long_text, long_reference
) -> None:
    vector = embedding(url).get_text_embedding(long_text[0])
    assert_same_vectors([vector], long_reference[None])


@pytest.mark.parametrize("size", TINY_SIZES)
def test_dimensions_on_a_matryoshka_model(url: str, size: int, tiny_reference) -> None:
    client = embedding(url, model=TINY, dimensions=size)
    assert_same_vectors(client.get_text_embedding_batch(TEXTS[:8]), tiny_reference[size])
