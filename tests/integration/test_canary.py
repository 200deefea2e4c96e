"""Canary checks in real replicas: silently wrong or NaN vectors never reach a client.

`faulty-hash` shares the space of `hash` with the same options, so a reference recorded
by a healthy backend is what a corrupted one is checked against.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedserve import EmbedInput, space_id
from embedserve.plugins.hash_backend import HashBackend
from embedserve.runtime.canary import CanaryReference, ReferenceStore
from tests.integration.conftest import embed, hash_backend

pytestmark = pytest.mark.integration

TEXTS = ["a probe of our own", "another request text"]


def config(state_dir: Path, canary: dict | None = None, **fault) -> dict:
    primary = {"kind": "faulty-hash", "options": fault, "resources": {"num_cpus": 0.1}}
    fallback = hash_backend()
    if canary is not None:
        primary["canary"] = fallback["canary"] = canary
    return {
        "server": {"state_dir": str(state_dir)},
        "backends": {"primary": primary, "hash": fallback},
        "models": {"m": {"chain": ["primary", "hash"]}},
    }


def expected_vectors() -> np.ndarray:
    return HashBackend().embed_batch([EmbedInput(t) for t in TEXTS]).dense


def served(url: str) -> tuple[dict, np.ndarray]:
    body = embed(url, model="m", input=TEXTS).json()
    return body, np.array([d["embedding"] for d in body["data"]], dtype=np.float32)


def replica_logs() -> str:
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    return "\n".join(p.read_text() for p in (session / "logs" / "serve").glob("replica_*"))


def test_silently_corrupted_vectors_are_caught_by_the_canary(deploy, tmp_path: Path) -> None:
    url = deploy(config(tmp_path, fault="none"))
    body, vectors = served(url)
    assert body["backend"] == "primary" and body["fallback"] is False
    assert list((tmp_path / "canaries").glob("hash-*.json")), "reference recorded"

    # The same space, now answering finite, unit-length, wrong vectors.
    deploy(config(tmp_path, fault="perturb"))
    body, vectors = served(url)
    assert body["backend"] == "hash" and body["fallback"] is True
    assert "canary" in body["fallback_reasons"][0]["reason"]
    assert np.allclose(vectors, expected_vectors(), atol=1e-6)
    assert "failed its canary check" in replica_logs()


def test_nan_on_a_later_batch_never_reaches_a_client(deploy, tmp_path: Path) -> None:
    # Healthy for 5 batches (the start-up canary, health checks, requests), then NaN;
    # one probe, so that each canary check is one batch (each probe is a batch).
    canary = {"probes": ["one probe"]}
    url = deploy(config(tmp_path, canary, fault="nan", fault_after_batches=5))
    answers = [served(url) for _ in range(10)]
    for _, vectors in answers:
        assert np.isfinite(vectors).all()
        assert np.allclose(vectors, expected_vectors(), atol=1e-6)
    backends = [body["backend"] for body, _ in answers]
    assert backends[0] == "primary" and backends[-1] == "hash", backends
    first_fallback = backends.index("hash")
    assert set(backends[first_fallback:]) == {"hash"}, "a replica that gave NaN stops serving"
    reasons = [r["reason"] for body, _ in answers for r in body.get("fallback_reasons", [])]
    assert "non-finite" in reasons[0]


def test_the_canary_fits_batches_smaller_than_its_probes(deploy, tmp_path: Path) -> None:
    """Five probes with max_batch_size 2: each probe is a batch of its own."""
    backend = {**hash_backend(), "batching": {"max_batch_size": 2}}
    url = deploy(
        {
            "server": {"state_dir": str(tmp_path)},
            "backends": {"hash": backend},
            "models": {"m": {"chain": ["hash"]}},
        }
    )
    assert httpx.get(f"{url}/readyz").status_code == 200  # the health-check canary passed
    assert embed(url, model="m", input=TEXTS).json()["backend"] == "hash"


def test_a_pinned_reference_refuses_a_drifted_replica_on_a_fresh_node(
    deploy, tmp_path: Path
) -> None:
    """The reference ships with the config (here a folder); the replica's state dir is
    empty, as on a new pod. Its shifted vectors are refused, not recorded."""
    probes = ["one probe", "two probes"]
    healthy = HashBackend().embed_batch([EmbedInput(p) for p in probes]).dense
    space = space_id(HashBackend().space_identity())
    ReferenceStore(str(tmp_path / "pinned")).save(CanaryReference.of(space, probes, healthy))
    pinned = {
        "state_dir": str(tmp_path / "state"),
        "canary": {"references": str(tmp_path / "pinned")},
    }
    app = config(tmp_path, {"probes": probes}, fault="perturb", perturbation=0.14)
    url = deploy({**app, "server": pinned})
    body, vectors = served(url)
    assert body["backend"] == "hash" and np.allclose(vectors, expected_vectors(), atol=1e-6)
    reason = body["fallback_reasons"][0]["reason"]
    assert re.search(r"probe \d \('(one probe|two probes)'\) has cosine 0\.99\d+", reason)
    assert f"pinned reference {tmp_path / 'pinned' / space}.json" in reason
    assert not (tmp_path / "state").exists(), "nothing was recorded on this node"


def test_a_strict_config_without_a_reference_refuses_and_names_the_command(
    deploy, tmp_path: Path
) -> None:
    url = deploy(
        {
            "server": {"state_dir": str(tmp_path), "canary": {"strict": True}},
            "backends": {"hash": hash_backend()},
            "models": {"m": {"chain": ["hash"]}},
        }
    )
    assert httpx.get(f"{url}/readyz").status_code == 503
    (backend,) = httpx.get(f"{url}/v1/models").json()["data"][0]["chain"]
    assert backend["available"] is False
    assert "no canary reference for space" in backend["reason"]
    assert "embedserve canary record --config CONFIG" in backend["reason"]
    assert embed(url, model="m", input=TEXTS).status_code == 503
