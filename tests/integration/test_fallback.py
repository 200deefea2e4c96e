"""Fallback chains inside real Serve replicas: a backend that fails for real is skipped.

`faulty-hash` (tests/fault_plugin) is the real hash backend with an injected fault; it
shares the space of a `hash` backend with the same options.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from embedserve.config import ConfigError
from tests.integration.conftest import embed, hash_backend

pytestmark = pytest.mark.integration


def faulty(fault: str) -> dict:
    return {"kind": "faulty-hash", "options": {"fault": fault}, "resources": {"num_cpus": 0.1}}


CONFIG = {
    "backends": {
        "raising": faulty("raise"),
        "nan": faulty("nan"),
        "unavailable": faulty("unavailable"),
        "hash": hash_backend(),
        "hash-seed-1": hash_backend(seed=1),
    },
    "models": {
        "same-space": {"chain": ["raising", "hash"]},
        "nan-first": {"chain": ["nan", "hash"]},
        "unavailable-first": {"chain": ["unavailable", "hash"]},
        "cross-space": {"chain": ["raising", "hash-seed-1"], "allow_cross_space": True},
        "all-fail": {"chain": ["raising", "nan"]},
        "never-ready": {"chain": ["unavailable"]},
    },
}


@pytest.fixture(scope="module")
def url(deploy) -> str:
    return deploy(CONFIG)


def hash_vectors(url: str, texts: list[str]) -> np.ndarray:
    body = embed(url, model="same-space", input=texts).json()
    return np.array([item["embedding"] for item in body["data"]])


def test_a_failing_first_backend_is_replaced_by_the_next_of_the_same_space(url: str) -> None:
    response = embed(url, model="same-space", input=["the quick brown fox"])
    body = response.json()
    assert response.status_code == 200
    assert body["backend"] == "hash"
    assert body["fallback"] is True
    assert response.headers["x-embedding-fallback"] == "true"
    [reason] = body["fallback_reasons"]
    assert reason["backend"] == "raising"
    assert "injected failure" in reason["reason"]


def test_nan_vectors_are_never_served(url: str) -> None:
    texts = ["one text", "another text"]
    body = embed(url, model="nan-first", input=texts).json()
    assert body["backend"] == "hash" and body["fallback"] is True
    assert "non-finite" in body["fallback_reasons"][0]["reason"]
    served = np.array([item["embedding"] for item in body["data"]])
    assert np.isfinite(served).all()
    assert np.allclose(served, hash_vectors(url, texts), atol=1e-6)


def test_an_unavailable_backend_is_reported_and_skipped(url: str) -> None:
    body = embed(url, model="unavailable-first", input="text").json()
    assert body["backend"] == "hash"
    assert "configured to be unavailable" in body["fallback_reasons"][0]["reason"]
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
    first = models["unavailable-first"]["chain"][0]
    assert first["available"] is False
    assert "configured to be unavailable" in first["reason"]


def test_cross_space_fallback_when_enabled_reports_the_other_space(url: str) -> None:
    body = embed(url, model="cross-space", input="text").json()
    same = embed(url, model="same-space", input="text").json()
    assert body["backend"] == "hash-seed-1"
    assert body["fallback"] is True
    assert body["space_id"] != same["space_id"]


def test_every_backend_failing_is_a_503_with_reasons(url: str) -> None:
    response = embed(url, model="all-fail", input="text")
    assert response.status_code == 503
    assert response.headers["retry-after"]
    error = response.json()["error"]
    assert error["code"] == "all_backends_failed"
    assert [b["backend"] for b in error["backends"]] == ["raising", "nan"]


def test_readiness_names_the_model_without_a_serving_backend(url: str) -> None:
    response = httpx.get(f"{url}/readyz")
    assert response.status_code == 503
    assert response.json()["serving_backends"]["never-ready"] == []
    # `raising` fails even its canary probes, so it does not count as serving.
    assert response.json()["serving_backends"]["same-space"] == ["hash"]


def test_cross_space_chain_is_refused_unless_enabled(deploy) -> None:
    config = {
        "backends": {"raising": faulty("raise"), "hash-seed-1": hash_backend(seed=1)},
        "models": {"m": {"chain": ["raising", "hash-seed-1"]}},
    }
    with pytest.raises(ConfigError, match="allow_cross_space"):
        deploy(config)
