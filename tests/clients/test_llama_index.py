"""llama-index's `OpenAILikeEmbedding` (llama-index-embeddings-openai-like) against the
served app. It calls the OpenAI SDK, in batches of `embed_batch_size` (10), and raises
the SDK's exceptions once its own retries (tenacity, on 429 and 5xx) are spent."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.embeddings.openai_like import OpenAILikeEmbedding
from openai import AuthenticationError, BadRequestError, NotFoundError, RateLimitError

from tests.clients.conftest import (
    KEY,
    MINILM,
    TEXTS,
    TINY,
    TINY_SIZES,
    UNSUPPORTED_SIZE,
    WRONG_KEY,
    assert_same_vectors,
    limited_key,
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


def test_400_is_the_sdks_bad_request_error(url: str) -> None:
    with pytest.raises(BadRequestError) as raised:
        embedding(url, model=TINY, dimensions=UNSUPPORTED_SIZE).get_text_embedding("hello")
    assert (raised.value.code, raised.value.param) == ("unsupported_dimensions", "dimensions")


def test_401_is_the_sdks_authentication_error(url: str) -> None:
    with pytest.raises(AuthenticationError) as raised:
        embedding(url, key=WRONG_KEY).get_text_embedding("hello")
    assert raised.value.code == "invalid_api_key"


def test_404_is_the_sdks_not_found_error(url: str) -> None:
    with pytest.raises(NotFoundError) as raised:
        embedding(url, model="no-such-model").get_text_embedding("hello")
    assert raised.value.code == "model_not_found"


def test_429_is_the_sdks_rate_limit_error(url: str) -> None:
    client = embedding(url, key=limited_key("llama-index"))
    client.get_text_embedding("hello")  # the minute's one request
    with pytest.raises(RateLimitError) as raised:
        client.get_text_embedding("hello")
    assert raised.value.code == "rate_limit_exceeded"
    assert int(raised.value.response.headers["retry-after"]) > 0
