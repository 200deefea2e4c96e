"""TEI's API on the served app, through huggingface_hub's InferenceClient: the bundled
default config's models, plus a tiny BGE-M3 (built from a config, loaded by the `bge-m3`
backend's real code) for sparse and multi-vector outputs. Vectors equal those of the
OpenAI and native routes for the same texts."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from embedserve.plugins.model_files import CPU_TOKEN_BUDGET
from tests.integration.conftest import embed
from tests.models.tiny import build_bge_m3, minilm_tokenizer
from tests.texts import paragraphs

pytestmark = [pytest.mark.integration, pytest.mark.models]

TEXTS = paragraphs(6, min_chars=40, max_chars=300)
LONG_TEXT = " ".join(["word"] * 300)  # 302 MiniLM tokens; the limit is 256


@pytest.fixture(scope="module")
def url(deploy, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The bundled default config (MiniLM first: TEI's default model) with a tiny BGE-M3."""
    config = yaml.safe_load(
        resources.files("embedserve").joinpath("default_config.yaml").read_text()
    )
    folder: Path = build_bge_m3(tmp_path_factory.mktemp("tiny-bge-m3"), colbert_dim=16)
    options = {"model": str(folder), "device": "cpu"}
    config["backends"]["tiny-m3"] = {
        "kind": "bge-m3",
        "options": options,
        "resources": {"num_cpus": 0},
    }
    config["models"]["tiny-m3"] = {"chain": ["tiny-m3"]}
    # The bundled references cover MiniLM and hash; the tiny model records its own.
    config["server"]["canary"]["strict"] = False
    return deploy(config)


@pytest.fixture(scope="module")
def client(url: str) -> InferenceClient:
    return InferenceClient(base_url=url)


def openai_vectors(url: str, texts: list[str], model: str = "all-minilm-l6-v2") -> np.ndarray:
    data = embed(url, model=model, input=texts).json()["data"]
    return np.array([item["embedding"] for item in data], dtype=np.float32)


def tei(url: str, route: str, model: str | None = None, **body: Any) -> httpx.Response:
    headers = {"X-Embedding-Model": model} if model else {}
    return httpx.post(f"{url}{route}", json=body, headers=headers, timeout=120)


def native(url: str, model: str, texts: list[str], output: str) -> list[Any]:
    items = [{"text": text} for text in texts]
    body = {"model": model, "items": items, "outputs": [output]}
    response = httpx.post(f"{url}/v1/embed", json=body, timeout=120)
    return [item[output] for item in response.json()["data"]]


def test_feature_extraction_of_one_text_and_of_a_list(client, url: str) -> None:
    reference = openai_vectors(url, TEXTS)
    listed = client.feature_extraction(TEXTS)
    assert listed.shape == (6, 384)
    np.testing.assert_allclose(listed, reference, atol=1e-6)
    one = client.feature_extraction(TEXTS[0])
    np.testing.assert_allclose(one, openai_vectors(url, TEXTS[:1]), atol=1e-6)


def test_the_model_header_chooses_the_model(url: str) -> None:
    hashed = InferenceClient(base_url=url, headers={"X-Embedding-Model": "hash"})
    np.testing.assert_array_equal(
        hashed.feature_extraction(TEXTS), openai_vectors(url, TEXTS, "hash")
    )


def test_normalize_and_the_metadata_headers(client, url: str) -> None:
    raw = client.feature_extraction(TEXTS, normalize=False)
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 1.0, rtol=1e-5)  # MiniLM's own
    response = tei(url, "/embed", inputs=TEXTS, normalize=True)
    assert response.headers["x-embedding-model"] == "all-minilm-l6-v2"
    assert response.headers["x-embedding-backend"] == "minilm"
    assert response.headers["x-embedding-normalized"] == "true"
    assert response.headers["x-embedding-truncated-tokens"] == "0"
    openai = embed(url, model="all-minilm-l6-v2", input=TEXTS).json()
    assert response.headers["x-embedding-space-id"] == openai["space_id"]


def test_an_over_long_text_is_truncated_by_the_bundled_config(client, url: str) -> None:
    vector = client.feature_extraction(LONG_TEXT, truncate=True)
    assert vector.shape == (1, 384)
    response = tei(url, "/embed", inputs=LONG_TEXT)  # server.truncate: true
    assert response.status_code == 200
    assert response.headers["x-embedding-truncated-tokens"] == str(302 - 256)
    with pytest.raises(HfHubHTTPError) as raised:
        client.feature_extraction(LONG_TEXT, truncate=False)
    refused = raised.value.response
    assert refused.status_code == 413
    assert refused.json()["error_type"] == "Validation"
    assert "`server.truncate: true`" in refused.json()["error"]


def test_an_unknown_model_header_is_teis_404(url: str) -> None:
    unknown = InferenceClient(base_url=url, headers={"X-Embedding-Model": "nope"})
    with pytest.raises(HfHubHTTPError) as raised:
        unknown.feature_extraction("hello")
    response = raised.value.response
    assert response.status_code == 404
    assert response.json()["error_type"] == "Validation"
    assert set(response.json()) == {"error", "error_type"}


def test_info_and_health(url: str) -> None:
    info = httpx.get(f"{url}/info").json()
    assert info["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["served_model_name"] == "all-minilm-l6-v2"
    assert info["max_input_length"] == 256
    assert info["auto_truncate"] is True
    assert info["max_batch_tokens"] == CPU_TOKEN_BUDGET, "resolved by the replica"
    assert (info["max_batch_requests"], info["max_client_batch_size"]) == (32, 2048)
    m3 = httpx.get(f"{url}/info", headers={"X-Embedding-Model": "tiny-m3"}).json()
    assert m3["model_type"] == {"embedding": {"pooling": "cls"}}
    assert httpx.get(f"{url}/health").status_code == 200


def test_tokenize_uses_the_models_tokenizer(url: str) -> None:
    response = tei(url, "/tokenize", inputs=TEXTS[:2])
    assert response.status_code == 200, response.text
    tokenizer = minilm_tokenizer()
    for text, tokens in zip(TEXTS[:2], response.json(), strict=True):
        assert [t["id"] for t in tokens] == tokenizer(text)["input_ids"]
        words = [t for t in tokens if not t["special"]]
        assert all(text[t["start"] : t["stop"]] == t["text"] for t in words)


@pytest.mark.parametrize("model", ["all-minilm-l6-v2", "tiny-m3"])
def test_token_ids_from_tokenize_embed_as_their_text(url: str, model: str) -> None:
    """`/tokenize`, then `/embed` with the ids it listed: the text's vector, from the real
    weights (MiniLM lower-cases: the ids spell the texts in lower case)."""
    texts = [*TEXTS, "Ray 🦄 serves, 中文 too"]  # MiniLM's [UNK] for the unicorn
    tokens = tei(url, "/tokenize", model=model, inputs=texts).json()
    ids = [[token["id"] for token in row] for row in tokens]
    if model == "all-minilm-l6-v2":  # over the token limit: truncated as its text is
        ids.append(minilm_tokenizer()(LONG_TEXT)["input_ids"])
        texts.append(LONG_TEXT)
    by_ids = tei(url, "/embed", model=model, inputs=ids, truncate=True)
    assert by_ids.status_code == 200, by_ids.text
    by_text = tei(url, "/embed", model=model, inputs=texts, truncate=True)
    np.testing.assert_allclose(by_ids.json(), by_text.json(), atol=1e-6)
    assert by_ids.headers["x-compute-tokens"] == by_text.headers["x-compute-tokens"]
    outside = tei(url, "/embed", model=model, inputs=[1477, 913621, 41710974, 223])
    assert (outside.status_code, outside.json()["error_type"]) == (422, "Validation")


def test_embed_sparse_is_the_native_sparse_output(url: str) -> None:
    response = tei(url, "/embed_sparse", model="tiny-m3", inputs=TEXTS)
    assert response.status_code == 200, response.text
    for sparse, expected in zip(
        response.json(), native(url, "tiny-m3", TEXTS, "sparse"), strict=True
    ):
        assert [pair["index"] for pair in sparse] == expected["indices"]
        np.testing.assert_allclose(
            [pair["value"] for pair in sparse], expected["values"], atol=1e-6
        )
    assert response.headers["x-embedding-backend"] == "tiny-m3"


def test_embed_all_is_the_native_multivector_output(url: str) -> None:
    response = tei(url, "/embed_all", model="tiny-m3", inputs=TEXTS)
    assert response.status_code == 200, response.text
    expected = native(url, "tiny-m3", TEXTS, "multivector")
    for served, reference in zip(response.json(), expected, strict=True):
        assert np.array(served).shape[1] == 16
        np.testing.assert_allclose(served, reference, atol=1e-6)
