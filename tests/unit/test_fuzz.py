"""Property-based tests: hypothesis on the request model and validation, and
schemathesis against the app's own OpenAPI schema (no 500s, no schema violations)."""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis.specs.openapi.checks import positive_data_acceptance

from embedserve.deployments.tei_errors import TEI_PATHS
from embedserve.errors import EmbedServeError
from embedserve.serving.schemas import EmbeddingsRequest
from embedserve.serving.validation import request_items
from tests.unit.fakes import A, call, make_app, make_config

# Lone surrogates and NUL included: texts a JSON client can send that UTF-8 cannot carry.
any_text = st.text(st.characters(exclude_categories=()), max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["mini", "nope"]) | st.text(max_size=5),
        "input": any_text | st.lists(any_text, max_size=5) | json_values,
        "dimensions": st.integers(min_value=-2, max_value=100) | json_values,
        "encoding_format": st.sampled_from(["float", "base64", "int8"]),
        "input_type": st.sampled_from(["query", "document", "other"]),
        "truncate": st.booleans(),
    },
)

APP, _ = make_app(make_config({"hash-a": A}, {"mini": {"chain": ["hash-a"]}}))


def post_json(body: Any) -> Any:
    """POST a body as Python's json writes it: NaN and Infinity as the bare literals some
    JSON clients send (httpx itself refuses to encode them)."""
    headers = {"content-type": "application/json"}
    return call(APP, "POST", "/v1/embeddings", content=json.dumps(body), headers=headers)


@given(request_like)
def test_request_parsing_raises_only_validation_errors(body: dict[str, Any]) -> None:
    try:
        request = EmbeddingsRequest.model_validate(body)
    except ValidationError:
        return
    try:
        texts = request_items(request.input, max_inputs=4, images=None)
    except EmbedServeError as error:
        assert 400 <= error.status_code < 500
        assert error.param is not None and error.param.startswith("input")
        return
    assert texts and all(isinstance(t, str) and t.strip() for t in texts)
    for text in texts:
        text.encode("utf-8")  # what reaches a backend is valid UTF-8


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request_like)
def test_the_router_answers_any_body_without_a_server_error(body: dict[str, Any]) -> None:
    response = post_json(body)
    assert response.status_code in {200, 400, 404, 413, 422}, response.text
    if response.status_code != 200:
        error = response.json()["error"]
        assert {"message", "type", "param", "code"} <= set(error)
    else:
        assert len(response.json()["data"]) == len(
            [body["input"]] if isinstance(body["input"], str) else body["input"]
        )
    json.dumps(response.json())  # always JSON


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values.filter(lambda value: not isinstance(value, dict)))
def test_a_body_that_is_not_an_object_is_a_client_error(body: Any) -> None:
    response = post_json(body)
    assert response.status_code in {400, 422}, response.text
    assert {"message", "type", "param", "code"} <= set(response.json()["error"])


schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_conforms_to_its_own_openapi_schema(case) -> None:
    # TEI's routes serve a default model without naming it in the body: a size, an output
    # or a tokenizer that model lacks is an honest 4xx to schema-valid data.
    excluded = [positive_data_acceptance] if case.path in TEI_PATHS else []
    case.call_and_validate(excluded_checks=excluded)
