"""huggingface_hub's `InferenceClient(base_url).feature_extraction(...)` against the TEI
routes of the served app (the model is the `X-Embedding-Model` header, else
`server.tei_default_model`: MiniLM, the bundled config's first model). Errors are
`HfHubHTTPError` (`BadRequestError` for 400) with TEI's error body on `.response`."""

from __future__ import annotations

from typing import Any

import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import BadRequestError, HfHubHTTPError

from tests.clients.conftest import (
    KEY,
    TEXTS,
    TINY,
    TINY_SIZES,
    UNSUPPORTED_SIZE,
    WRONG_KEY,
    assert_same_vectors,
    limited_key,
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


def tei_error(raised: pytest.ExceptionInfo[HfHubHTTPError]) -> tuple[int, dict[str, Any]]:
    return raised.value.response.status_code, raised.value.response.json()


def test_400_is_a_bad_request_error(url: str) -> None:
    with pytest.raises(BadRequestError) as raised:
        client(url, model=TINY).feature_extraction("hello", dimensions=UNSUPPORTED_SIZE)
    status, body = tei_error(raised)
    assert (status, body["error_type"]) == (400, "Validation")
    assert "32, 16, 8" in str(raised.value)  # the client shows the server's message


def test_401_is_an_http_error(url: str) -> None:
    with pytest.raises(HfHubHTTPError) as raised:
        client(url, key=WRONG_KEY).feature_extraction("hello")
    assert tei_error(raised) == (401, {"error": "invalid API key", "error_type": "Validation"})


def test_404_is_an_http_error(url: str) -> None:
    with pytest.raises(HfHubHTTPError) as raised:
        client(url, model="no-such-model").feature_extraction("hello")
    status, body = tei_error(raised)
    assert (status, body["error_type"]) == (404, "Validation")
    assert "model 'no-such-model' does not exist" in body["error"]


def test_429_is_an_http_error_with_retry_after(url: str) -> None:
    limited = client(url, key=limited_key("hf-hub"))
    limited.feature_extraction("hello")  # the minute's one request
    with pytest.raises(HfHubHTTPError) as raised:
        limited.feature_extraction("hello")
    status, body = tei_error(raised)
    assert (status, body["error_type"]) == (429, "Overloaded")
    assert int(raised.value.response.headers["retry-after"]) > 0
