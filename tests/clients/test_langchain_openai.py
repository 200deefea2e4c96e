"""langchain-openai's `OpenAIEmbeddings` against the served app.

With `check_embedding_ctx_length=False` it sends the texts, through the OpenAI SDK (whose
exceptions it raises unchanged). Its default, `check_embedding_ctx_length=True`, first
tokenizes with tiktoken's `cl100k_base` (an OpenAI vocabulary, downloaded on first use)
and sends token-id arrays, which no other vocabulary can read: the server refuses them.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_openai import OpenAIEmbeddings
from openai import BadRequestError

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


def embeddings(url: str, model: str = MINILM, key: str = KEY, **options: Any) -> OpenAIEmbeddings:
    options = {"check_embedding_ctx_length": False, "max_retries": 0, **options}
    return OpenAIEmbeddings(model=model, base_url=f"{url}/v1", api_key=key, **options)


def test_a_batch_of_100_texts(url: str, texts_reference) -> None:
    http_client, sent = recording_http_client()
    client = embeddings(url, http_client=http_client)
    assert_same_vectors(client.embed_documents(TEXTS), texts_reference)
    assert_same_vectors([client.embed_query(TEXTS[0])], texts_reference[:1])
    # One request for the 100 texts (chunk_size 1000), then the query; the texts are sent
    # as they are, in the SDK's default base64.
    assert [len(body["input"]) for body in sent] == [100, 1]
    assert sent[0]["input"] == TEXTS
    assert {body["encoding_format"] for body in sent} == {"base64"}


def test_an_over_long_text_is_truncated_to_its_first_256_tokens(
    url: str, long_text, long_reference
) -> None:
    assert_same_vectors([embeddings(url).embed_query(long_text[0])], long_reference[None])


@pytest.mark.parametrize("size", TINY_SIZES)
def test_dimensions_on_a_matryoshka_model(url: str, size: int, tiny_reference) -> None:
    http_client, sent = recording_http_client()
    client = embeddings(url, model=TINY, dimensions=size, http_client=http_client)
    assert_same_vectors(client.embed_documents(TEXTS[:8]), tiny_reference[size])
    assert sent[0]["dimensions"] == size


class _ByteEncoding:
    """Stands in for tiktoken's `cl100k_base`, which is downloaded on first use and
    cannot be here: token ids are what langchain sends either way."""

    def encode_ordinary(self, text: str) -> list[int]:
        return list(text.encode())


def test_the_default_length_check_sends_token_ids_which_are_refused(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiktoken

    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: _ByteEncoding())
    http_client, sent = recording_http_client()
    client = embeddings(url, check_embedding_ctx_length=True, http_client=http_client)
    with pytest.raises(BadRequestError) as raised:
        client.embed_documents(["hello world"])
    assert sent[0]["input"] == [list(b"hello world")]
    assert raised.value.param == "input[0]"
    assert "token-id inputs are not supported" in raised.value.message
    assert "check_embedding_ctx_length=False" in raised.value.message
