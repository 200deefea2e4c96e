"""The router's HTTP app, in-process and without Ray.

Backend deployments are replaced by in-process handles (`tests.unit.fakes`) that run a real
backend (the hash backend) and answer exactly as `BackendDeployment.embed` / `.describe`
do; variants raise, answer NaN, sleep past the link's timeout, or describe themselves
unavailable.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fastapi import FastAPI

from embedserve import EmbedInput
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
    NaNHandle,
    RaisingHandle,
    SilentHandle,
    SlowHandle,
    UnavailableHandle,
    assert_error,
    call,
    embed,
    hash_vectors,
    make_app,
    make_config,
)

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.fixture
def single() -> FastAPI:
    """One model `mini` served by one hash backend."""
    app, _ = make_app(make_config({"hash-a": A}, {"mini": {"chain": ["hash-a"]}}))
    return app


# --- POST /v1/embeddings: the OpenAI shape and embedserve's metadata ----------------------


def test_openai_response_shape(single: FastAPI) -> None:
    response = embed(single, model="mini", input=TEXTS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    np.testing.assert_array_equal(
        np.array([d["embedding"] for d in body["data"]], dtype=np.float32),
        hash_vectors(A["options"], TEXTS),
    )
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"]


def test_metadata_fields_and_headers(single: FastAPI) -> None:
    response = embed(single, model="mini", input=TEXTS)
    body = response.json()
    expected = {
        "model": "mini",
        "backend": "hash-a",
        "space_id": SPACE_A,
        "dimensions": 64,
        "normalized": True,
        "semantic": False,
        "fallback": False,
    }
    assert {key: body[key] for key in expected} == expected
    assert "fallback_reasons" not in body
    headers = response.headers
    assert headers["x-embedding-model"] == "mini"
    assert headers["x-embedding-backend"] == "hash-a"
    assert headers["x-embedding-space-id"] == SPACE_A
    assert headers["x-embedding-dimensions"] == "64"
    assert headers["x-embedding-normalized"] == "true"
    assert headers["x-embedding-semantic"] == "false"
    assert headers["x-embedding-fallback"] == "false"
    assert headers["x-embedding-truncated-tokens"] == "0"


def test_base64_decodes_to_the_float_vectors(single: FastAPI) -> None:
    floats = embed(single, model="mini", input=TEXTS, encoding_format="float").json()
    encoded = embed(single, model="mini", input=TEXTS, encoding_format="base64").json()
    for as_float, as_base64 in zip(floats["data"], encoded["data"], strict=True):
        assert isinstance(as_base64["embedding"], str)
        decoded = np.frombuffer(base64.b64decode(as_base64["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.array(as_float["embedding"], dtype=np.float32))
    assert encoded["dimensions"] == floats["dimensions"] == 64


def test_string_input_is_one_item(single: FastAPI) -> None:
    one = embed(single, model="mini", input=TEXTS[0]).json()
    listed = embed(single, model="mini", input=[TEXTS[0]]).json()
    assert len(one["data"]) == 1
    assert one["data"] == listed["data"]
    assert one["usage"] == listed["usage"]


def test_openai_sdk_works_unchanged(single: FastAPI) -> None:
    async def go() -> tuple[Any, Any]:
        http_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=single))
        client = openai.AsyncOpenAI(
            base_url="http://test/v1", api_key="unused", http_client=http_client, max_retries=0
        )
        async with client:
            # Without encoding_format the SDK asks for base64 and decodes it itself.
            default = await client.embeddings.create(model="mini", input=TEXTS)
            floats = await client.embeddings.create(
                model="mini", input=TEXTS, encoding_format="float"
            )
        return default, floats

    default, floats = asyncio.run(go())
    expected = hash_vectors(A["options"], TEXTS)
    for response in (default, floats):
        assert [d.index for d in response.data] == [0, 1, 2]
        np.testing.assert_array_equal(
            np.array([d.embedding for d in response.data], dtype=np.float32), expected
        )
        assert response.usage.prompt_tokens > 0
        assert response.model == "mini"
        assert response.model_extra["space_id"] == SPACE_A


def test_openai_sdk_sees_the_error_envelope(single: FastAPI) -> None:
    async def go() -> None:
        http_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=single))
        client = openai.AsyncOpenAI(
            base_url="http://test/v1", api_key="unused", http_client=http_client, max_retries=0
        )
        async with client:
            await client.embeddings.create(model="gpt-nope", input="hi")

    with pytest.raises(openai.NotFoundError) as info:
        asyncio.run(go())
    assert info.value.param == "model"
    assert info.value.code == "model_not_found"


def test_user_and_input_type_are_accepted(single: FastAPI) -> None:
    response = embed(single, model="mini", input=TEXTS, user="u-1", input_type="query")
    assert response.status_code == 200, response.text


def test_request_larger_than_a_batch_keeps_input_order() -> None:
    backend = {**A, "batching": {"max_batch_size": 2}}
    app, handles = make_app(make_config({"hash-a": backend}, {"mini": {"chain": ["hash-a"]}}))
    texts = [f"text number {i}" for i in range(5)]
    body = embed(app, model="mini", input=texts).json()
    assert [d["index"] for d in body["data"]] == list(range(5))
    np.testing.assert_array_equal(
        np.array([d["embedding"] for d in body["data"]], dtype=np.float32),
        hash_vectors(A["options"], texts),
    )
    assert handles["hash-a"].calls == 3, "spread over the deployment in batch-sized calls"
    assert body["usage"]["prompt_tokens"] == sum(
        HashBackend().count_tokens([EmbedInput(t) for t in texts])
    )


# --- fallback chains over HTTP ------------------------------------------------------------
def _readme_json(after: str, wrap: bool = False) -> Any:
    """The first JSON block of the README after `after`; `wrap` puts a fragment in braces."""
    start = README.index("```json\n", README.index(after)) + len("```json\n")
    block = README[start : README.index("```", start)]
    return json.loads("{" + block + "}" if wrap else block)


def test_the_readme_shows_failures_as_they_are_served() -> None:
    # The README's 503 and fallback_reasons examples lacked `kind`.
    config = make_config(
        {"hash-gpu": A, "hash-cpu": A, "hash-spare": A},
        {"mini": {"chain": ["hash-gpu", "hash-cpu"]}, "all": {"chain": ["hash-gpu", "hash-spare"]}},
    )
    app, _ = make_app(config, {"hash-gpu": RaisingHandle, "hash-spare": NaNHandle})
    served_reasons = embed(app, model="mini", input=TEXTS).json()["fallback_reasons"]
    served_backends = assert_error(embed(app, model="all", input=TEXTS), 503)["backends"]

    readme_reasons = _readme_json("plus a list of the backends that", wrap=True)
    readme_backends = _readme_json("Example of a 503 body:")["error"]["backends"]
    for shown, served in [
        *zip(readme_reasons["fallback_reasons"], served_reasons, strict=True),
        *zip(readme_backends, served_backends, strict=True),
    ]:
        assert shown.keys() == served.keys()
        assert shown["kind"] == served["kind"]


def test_failing_primary_falls_back_within_its_space() -> None:
    config = make_config(
        {"hash-gpu": A, "hash-cpu": A}, {"mini": {"chain": ["hash-gpu", "hash-cpu"]}}
    )
    app, handles = make_app(config, {"hash-gpu": RaisingHandle})
    response = embed(app, model="mini", input=TEXTS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["backend"] == "hash-cpu"
    assert body["space_id"] == SPACE_A
    assert body["fallback"] is True
    assert response.headers["x-embedding-fallback"] == "true"
    assert response.headers["x-embedding-backend"] == "hash-cpu"
    (reason,) = body["fallback_reasons"]
    assert reason["backend"] == "hash-gpu"
    assert "out of memory" in reason["reason"]
    assert handles["hash-gpu"].calls == 1


def test_the_primary_replica_reuses_the_routers_token_counts() -> None:
    """The router counts once with the primary's tokenizer; its replicas get the counts,
    a fallback backend (maybe another tokenizer) counts for itself."""
    config = make_config(
        {"hash-gpu": A, "hash-cpu": A}, {"mini": {"chain": ["hash-gpu", "hash-cpu"]}}
    )
    app, handles = make_app(config)
    assert embed(app, model="mini", input=TEXTS).status_code == 200
    expected = handles["hash-gpu"].backend.count_tokens([EmbedInput(t) for t in TEXTS])
    assert handles["hash-gpu"].received_counts == [expected]
    app, handles = make_app(config, {"hash-gpu": RaisingHandle})
    response = embed(app, model="mini", input=TEXTS)
    assert response.json()["backend"] == "hash-cpu"
    assert handles["hash-cpu"].received_counts == [None]
    assert response.json()["usage"]["prompt_tokens"] == sum(expected)


def test_cross_space_fallback_reports_the_second_space() -> None:
    config = make_config(
        {"hash-a": A, "hash-b": B},
        {"mixed": {"chain": ["hash-a", "hash-b"], "allow_cross_space": True}},
    )
    app, _ = make_app(config, {"hash-a": RaisingHandle})
    response = embed(app, model="mixed", input=TEXTS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["backend"] == "hash-b"
    assert body["space_id"] == SPACE_B != SPACE_A
    assert body["dimensions"] == 32
    assert body["fallback"] is True
    assert response.headers["x-embedding-space-id"] == SPACE_B
    np.testing.assert_array_equal(
        np.array([d["embedding"] for d in body["data"]], dtype=np.float32),
        hash_vectors(B["options"], TEXTS),
    )


def test_nan_answer_falls_back() -> None:
    config = make_config(
        {"hash-gpu": A, "hash-cpu": A}, {"mini": {"chain": ["hash-gpu", "hash-cpu"]}}
    )
    app, _ = make_app(config, {"hash-gpu": NaNHandle})
    response = embed(app, model="mini", input=TEXTS)
    assert response.status_code == 200
    body = response.json()
    assert body["backend"] == "hash-cpu"
    assert np.isfinite(np.array([d["embedding"] for d in body["data"]])).all()
    assert "non-finite" in body["fallback_reasons"][0]["reason"]


def test_nan_answer_is_never_returned() -> None:
    config = make_config({"hash-a": A}, {"mini": {"chain": ["hash-a"]}})
    app, _ = make_app(config, {"hash-a": NaNHandle})
    response = embed(app, model="mini", input=TEXTS)
    error = assert_error(response, 503)
    assert "data" not in response.json()
    assert "non-finite" in error["backends"][0]["reason"]


def test_every_backend_failing_is_503_with_each_reason() -> None:
    config = make_config(
        {"hash-gpu": A, "hash-cpu": {**A, "timeout_s": 0.05}, "hash-spare": A},
        {"mini": {"chain": ["hash-gpu", "hash-cpu", "hash-spare"]}},
    )
    handle_types = {"hash-gpu": RaisingHandle, "hash-cpu": SlowHandle, "hash-spare": NaNHandle}
    app, _ = make_app(config, handle_types)
    response = embed(app, model="mini", input=TEXTS)
    error = assert_error(response, 503)
    assert error["type"] == "service_unavailable"
    assert error["code"] == "all_backends_failed"
    assert "mini" in error["message"]
    assert [b["backend"] for b in error["backends"]] == ["hash-gpu", "hash-cpu", "hash-spare"]
    reasons = [b["reason"] for b in error["backends"]]
    assert "out of memory" in reasons[0]
    assert "timed out" in reasons[1]
    assert "non-finite" in reasons[2]
    assert response.headers["retry-after"].isdigit()


def test_unavailable_backend_falls_back() -> None:
    config = make_config(
        {"hash-gpu": A, "hash-cpu": A}, {"mini": {"chain": ["hash-gpu", "hash-cpu"]}}
    )
    app, _ = make_app(config, {"hash-gpu": UnavailableHandle})
    body = embed(app, model="mini", input=TEXTS).json()
    assert body["backend"] == "hash-cpu"
    assert "BackendUnavailable" in body["fallback_reasons"][0]["reason"]


# --- dimensions ---------------------------------------------------------------------------


def test_unsupported_dimensions_is_400_naming_the_size(single: FastAPI) -> None:
    error = assert_error(embed(single, model="mini", input=TEXTS, dimensions=16), 400, "dimensions")
    assert error["type"] == "invalid_request_error"
    assert "64" in error["message"]


def test_native_dimensions_are_accepted(single: FastAPI) -> None:
    response = embed(single, model="mini", input=TEXTS, dimensions=64)
    assert response.status_code == 200, response.text
    assert response.json()["space_id"] == SPACE_A
    assert response.json()["dimensions"] == 64


def test_matryoshka_dimensions_truncate_into_their_own_space() -> None:
    app, _ = make_app(
        make_config({"hash-a": A}, {"mini": {"chain": ["hash-a"]}}), {"hash-a": MatryoshkaHandle}
    )
    error = assert_error(embed(app, model="mini", input=TEXTS, dimensions=24), 400, "dimensions")
    for size in ("64", "16", "32"):
        assert size in error["message"]
    response = embed(app, model="mini", input=TEXTS, dimensions=16)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dimensions"] == 16
    assert body["space_id"] == truncated_space_id(SPACE_A, 16)
    assert response.headers["x-embedding-dimensions"] == "16"
    vectors = np.array([d["embedding"] for d in body["data"]])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    full = hash_vectors(A["options"], TEXTS)[:, :16]
    expected = full / np.linalg.norm(full, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, rtol=1e-5)


# --- request errors -----------------------------------------------------------------------


def test_unknown_model_is_404(single: FastAPI) -> None:
    error = assert_error(embed(single, model="gpt-nope", input="hi"), 404, "model")
    assert error["code"] == "model_not_found"
    assert "mini" in error["message"], "the message names the models served here"


def test_malformed_json_is_400(single: FastAPI) -> None:
    response = call(
        single,
        "POST",
        "/v1/embeddings",
        content=b'{"model": "mini", "input": ',
        headers={"content-type": "application/json"},
    )
    error = assert_error(response, 400)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": 5, "input": "hi"}, "model"),
        ({"input": "hi"}, "model"),
        ({"model": "mini", "input": "hi", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "mini", "input": "hi", "dimensions": 0}, "dimensions"),
        ({"model": "mini", "input": "hi", "dimensions": "many"}, "dimensions"),
        ({"model": "mini", "input": "hi", "temperature": 1}, "temperature"),
    ],
)
def test_wrong_types_are_422_naming_the_param(
    single: FastAPI, body: dict[str, Any], param: str
) -> None:
    error = assert_error(call(single, "POST", "/v1/embeddings", json=body), 422, param)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "validation_error"


@pytest.mark.parametrize("bad_input", [None, 12, {"text": "hi"}])
def test_wrong_input_types_are_422_on_input(single: FastAPI, bad_input: Any) -> None:
    # `param` names the request parameter, as OpenAI's does; not a pydantic union member
    # such as `input.str`.
    error = assert_error(embed(single, model="mini", input=bad_input), 422, "input")
    assert error["code"] == "validation_error"


def test_wrong_item_in_input_list_is_422_on_input(single: FastAPI) -> None:
    # `{"text": ...}` and `{"image": ...}` items are valid (see test_images_api.py).
    response = embed(single, model="mini", input=["hi", {"txt": "there"}])
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] in ("input", "input.1")


@pytest.mark.parametrize("tokens", [[101, 2023, 102], [[101, 2023], [102]]])
def test_token_id_inputs_are_400(single: FastAPI, tokens: list[Any]) -> None:
    error = assert_error(embed(single, model="mini", input=tokens), 400, "input[0]")
    assert "token" in error["message"]


def test_empty_input_list_is_400(single: FastAPI) -> None:
    assert_error(embed(single, model="mini", input=[]), 400, "input")


def test_too_many_inputs_is_413() -> None:
    config = make_config({"hash-a": A}, {"mini": {"chain": ["hash-a"]}}, max_inputs_per_request=2)
    app, handles = make_app(config)
    error = assert_error(embed(app, model="mini", input=TEXTS), 413, "input")
    assert "2" in error["message"]
    assert handles["hash-a"].calls == 0
    assert embed(app, model="mini", input=TEXTS[:2]).status_code == 200


@pytest.fixture
def small_body_limit() -> FastAPI:
    config = make_config({"hash-a": A}, {"mini": {"chain": ["hash-a"]}}, max_request_bytes=1024)
    app, _ = make_app(config)
    return app


def test_body_over_the_limit_is_413(small_body_limit: FastAPI) -> None:
    response = embed(small_body_limit, model="mini", input="word " * 400)
    error = assert_error(response, 413)
    assert error["code"] == "payload_too_large"
    assert "1024" in error["message"]
    assert embed(small_body_limit, model="mini", input="word " * 100).status_code == 200


def post_streamed(app: FastAPI, payload: dict, chunk_size: int) -> httpx.Response:
    """POST a JSON body in chunks, without a content-length header."""
    body = json.dumps(payload).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), chunk_size):
            yield body[start : start + chunk_size]

    response = call(
        app,
        "POST",
        "/v1/embeddings",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    return response


def test_streamed_body_over_the_limit_is_413(small_body_limit: FastAPI) -> None:
    response = post_streamed(small_body_limit, {"model": "mini", "input": "word " * 400}, 256)
    assert_error(response, 413)


def test_streamed_body_under_the_limit_is_read(small_body_limit: FastAPI) -> None:
    response = post_streamed(small_body_limit, {"model": "mini", "input": TEXTS}, 16)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 3


@pytest.mark.parametrize(
    "headers",
    [{"content-type": "application/x-www-form-urlencoded"}, {}],
    ids=["curl -d", "no content type"],
)
def test_form_encoded_or_untyped_body_is_read_as_json(
    single: FastAPI, headers: dict[str, str]
) -> None:
    body = json.dumps({"model": "mini", "input": TEXTS}).encode()
    response = call(single, "POST", "/v1/embeddings", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 3


def test_unknown_route_is_404_envelope(single: FastAPI) -> None:
    assert_error(call(single, "GET", "/v1/nothing"), 404)


# --- health, readiness, models, OpenAPI ---------------------------------------------------


def test_healthz(single: FastAPI) -> None:
    response = call(single, "GET", "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_when_every_model_can_serve() -> None:
    config = make_config(
        {"hash-gpu": A, "hash-cpu": A, "hash-b": B},
        {"mini": {"chain": ["hash-gpu", "hash-cpu"]}, "other": {"chain": ["hash-b"]}},
    )
    app, _ = make_app(config, {"hash-gpu": UnavailableHandle})
    response = call(app, "GET", "/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["serving_backends"] == {"mini": ["hash-cpu"], "other": ["hash-b"]}


@pytest.mark.parametrize("handle_type", [UnavailableHandle, SilentHandle])
def test_readyz_is_503_when_a_models_only_backend_cannot_serve(
    handle_type: type[BackendHandle],
) -> None:
    config = make_config(
        {"hash-a": A, "hash-b": B},
        {"mini": {"chain": ["hash-a"]}, "other": {"chain": ["hash-b"]}},
    )
    app, _ = make_app(config, {"hash-b": handle_type})
    response = call(app, "GET", "/readyz")
    assert response.status_code == 503
    assert response.json()["serving_backends"] == {"mini": ["hash-a"], "other": []}


def test_readyz_does_not_trust_a_stale_description() -> None:
    """A backend that described itself once and then stops answering is not ready."""
    config = make_config({"hash-a": A}, {"mini": {"chain": ["hash-a"]}})
    app, handles = make_app(config)
    assert call(app, "GET", "/readyz").status_code == 200
    handles["hash-a"].silent = True
    response = call(app, "GET", "/readyz")
    assert response.status_code == 503, response.text
    assert response.json()["serving_backends"] == {"mini": []}


def test_models_lists_chains_spaces_dimensions_and_modalities() -> None:
    config = make_config(
        {"hash-a": A, "hash-a2": A, "hash-b": B},
        {
            "mini": {"chain": ["hash-a", "hash-a2"]},
            "mixed": {"chain": ["hash-b", "hash-a"], "allow_cross_space": True},
        },
        max_inputs_per_request=7,
    )
    app, _ = make_app(config, {"hash-a2": UnavailableHandle})
    response = call(app, "GET", "/v1/models")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    cards = {card["id"]: card for card in body["data"]}
    assert set(cards) == {"mini", "mixed"}

    mini = cards["mini"]
    assert mini["object"] == "model"
    assert mini["space_id"] == SPACE_A
    assert mini["dimensions"] == 64
    assert mini["allow_cross_space"] is False
    assert mini["max_inputs_per_request"] == 7
    assert [b["name"] for b in mini["chain"]] == ["hash-a", "hash-a2"]
    first, second = mini["chain"]
    assert first["kind"] == "hash"
    assert first["space_id"] == second["space_id"] == SPACE_A
    assert first["modalities"] == ["text"]
    assert first["outputs"] == ["dense"]
    assert first["semantic"] is False and first["normalized"] is True
    assert first["available"] is True
    assert second["available"] is False
    assert "extra" in second["reason"]

    mixed = cards["mixed"]
    assert mixed["space_id"] == SPACE_B
    assert mixed["dimensions"] == 32
    assert mixed["allow_cross_space"] is True
    assert [(b["name"], b["space_id"], b["dimensions"]) for b in mixed["chain"]] == [
        ("hash-b", SPACE_B, 32),
        ("hash-a", SPACE_A, 64),
    ]


def test_models_when_a_backend_does_not_describe_itself() -> None:
    app, _ = make_app(
        make_config({"hash-a": A}, {"mini": {"chain": ["hash-a"]}}), {"hash-a": SilentHandle}
    )
    response = call(app, "GET", "/v1/models")
    assert response.status_code == 200, response.text
    (backend,) = response.json()["data"][0]["chain"]
    assert backend["available"] is None
    assert backend["dimensions"] == 64, "the configured dimensions are still known"


def test_openapi_schema_documents_the_embeddings_endpoint(single: FastAPI) -> None:
    response = call(single, "GET", "/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "post" in paths["/v1/embeddings"]
    assert "/v1/models" in paths


# --- the interactive docs work offline ------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_their_assets_from_the_server(single: FastAPI, page: str) -> None:
    # Without a network (the default on many servers) a CDN script leaves the page blank.
    html = call(single, "GET", page).text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    assert all(asset.startswith("/") for asset in assets), assets
    kinds = set()
    for asset in assets:
        response = call(single, "GET", asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 100, asset
        kinds.add(response.headers["content-type"].split(";")[0])
    assert "text/javascript" in kinds or "application/javascript" in kinds
    if page == "/docs":
        assert "text/css" in kinds


# --- errors echo a bounded part of what the client sent -----------------------------------

HUGE = "m" * 1_000_000


def _assert_echo_bounded(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text[:300]
    assert len(response.content) < 4096, len(response.content)
    assert "1000000 characters" in response.text, response.text


def test_a_huge_model_name_is_not_echoed_whole(single: FastAPI) -> None:
    _assert_echo_bounded(embed(single, model=HUGE, input="hi"), 404)
    native = call(single, "POST", "/v1/embed", json={"model": HUGE, "items": [{"text": "hi"}]})
    _assert_echo_bounded(native, 404)
    tei = call(single, "POST", "/embed", json={"inputs": "hi"}, headers={"X-Embedding-Model": HUGE})
    _assert_echo_bounded(tei, 404)


def test_a_huge_unknown_field_is_not_echoed_whole(single: FastAPI) -> None:
    response = embed(single, model="mini", input="hi", **{HUGE: 1})
    _assert_echo_bounded(response, 422)
    assert len(response.json()["error"]["param"]) < 200


def test_outputs_not_asked_for_are_left_out_as_the_api_docs_say(single: FastAPI) -> None:
    response = call(single, "POST", "/v1/embed", json={"model": "mini", "items": [{"text": "hi"}]})
    assert response.status_code == 200, response.text
    assert response.json()["data"][0].keys() == {"index", "dense"}
    # The schema's description is what /docs shows; it said such outputs were null.
    openapi = call(single, "GET", "/openapi.json").json()
    described = " ".join(openapi["components"]["schemas"]["EmbedResult"]["description"].split())
    assert "left out" in described and "null" not in described.replace("never null", "")
