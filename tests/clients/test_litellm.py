"""litellm's `embedding()` against the served app, through its two providers for an
OpenAI-compatible server: `openai/<model>` (through the OpenAI SDK) and
`hosted_vllm/<model>` (its own HTTP call). Errors are litellm's exceptions, which
subclass the OpenAI SDK's.

`openai/` refuses `dimensions` itself for model names other than OpenAI's
`text-embedding-3-*` (UnsupportedParamsError, no request sent); litellm's
`allowed_openai_params=["dimensions"]` passes it through. Its errors:
tests/clients/test_errors.py.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.clients.conftest import (
    KEY,
    MINILM,
    TEXTS,
    TINY,
    TINY_SIZES,
    assert_same_vectors,
    from_base64,
)

# litellm fetches its model-cost map from GitHub at import unless told to use its copy
# (the conftest sets it too, for any module that imports litellm).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm

pytestmark = [
    pytest.mark.clients,
    pytest.mark.integration,
    # litellm's own pydantic models: notes on its types, and on base64 strings in a field
    # typed as floats.
    pytest.mark.filterwarnings("ignore:Items? .* `ReadOnly` qualifier:UserWarning"),
    pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning"),
]

PROVIDERS = ["openai", "hosted_vllm"]
# What `dimensions` needs on each provider.
DIMENSIONS_OPTIONS = {"openai": {"allowed_openai_params": ["dimensions"]}, "hosted_vllm": {}}


@pytest.fixture(autouse=True)
def quiet_litellm(monkeypatch: pytest.MonkeyPatch) -> None:
    """No "Give Feedback / Get Help" banner on stdout with every exception."""
    monkeypatch.setattr(litellm, "suppress_debug_info", True)


def embed(url: str, model: str, texts: Any, key: str = KEY, **options: Any) -> Any:
    return litellm.embedding(
        model=model, input=texts, api_base=f"{url}/v1", api_key=key, max_retries=0, **options
    )


def vectors(response: Any) -> list[Any]:
    return [item["embedding"] for item in response.data]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_batch_of_100_texts(url: str, provider: str, texts_reference) -> None:
    response = embed(url, f"{provider}/{MINILM}", TEXTS)
    assert [item["index"] for item in response.data] == list(range(100))
    assert_same_vectors(vectors(response), texts_reference)
    assert response.usage.prompt_tokens > 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_over_long_text_is_truncated_to_its_first_256_tokens(
    url: str, provider: str, long_text, long_reference
) -> None:
    response = embed(url, f"{provider}/{MINILM}", long_text[0])
    assert_same_vectors(vectors(response), long_reference[None])
    assert response.usage.prompt_tokens == 256


@pytest.mark.parametrize("provider", PROVIDERS)
def test_base64_is_returned_undecoded(url: str, provider: str, texts_reference) -> None:
    response = embed(url, f"{provider}/{MINILM}", TEXTS[:8], encoding_format="base64")
    assert all(isinstance(encoded, str) for encoded in vectors(response))
    assert_same_vectors(
        [from_base64(encoded) for encoded in vectors(response)], texts_reference[:8]
    )


@pytest.mark.parametrize("size", TINY_SIZES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_dimensions_on_a_matryoshka_model(
    url: str, provider: str, size: int, tiny_reference
) -> None:
    options = DIMENSIONS_OPTIONS[provider]
    response = embed(url, f"{provider}/{TINY}", TEXTS[:8], dimensions=size, **options)
    assert_same_vectors(vectors(response), tiny_reference[size])


def test_openai_provider_refuses_dimensions_for_other_model_names(url: str) -> None:
    with pytest.raises(litellm.UnsupportedParamsError, match="text-embedding-3"):
        embed(url, f"openai/{TINY}", "hello", dimensions=TINY_SIZES[0])
