"""The Python client against the served default app (MiniLM and hash), with a tiny
SigLIP 2 for images, a tiny BGE-M3 for sparse and multi-vectors, and a chain whose
primary is down so that a fallback of another space serves: the guard catches it at the
write, in FAISS and in Qdrant."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from openai import OpenAI

from embedserve import EmbedInput
from embedserve.client import (
    AsyncEmbedClient,
    EmbedClient,
    FaissIndex,
    QdrantIndex,
    SpaceGuard,
    SpaceMismatch,
)
from embedserve.plugins.bge_m3_backend import BgeM3Backend
from embedserve.plugins.clip_backend import ClipBackend
from embedserve.plugins.hash_backend import HashBackend
from tests.make_run import blocking_prelude
from tests.models.tiny import build_bge_m3, build_clip_family, photo, photo_file
from tests.texts import paragraphs

pytestmark = pytest.mark.integration

MINILM = "all-minilm-l6-v2"
MAX_INPUTS = 1000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return {
        "siglip2": build_clip_family("siglip2", tmp_path_factory.mktemp("siglip2")),
        "bge": build_bge_m3(tmp_path_factory.mktemp("bge"), colbert_dim=16),
    }


def served_config(tiny: dict[str, Path], state_dir: Path) -> dict[str, Any]:
    """The bundled config, plus the tiny image and sparse models and a broken chain."""
    config = yaml.safe_load(
        resources.files("embedserve").joinpath("default_config.yaml").read_text()
    )
    config["server"].update(max_inputs_per_request=MAX_INPUTS, state_dir=str(state_dir))
    # The bundled references cover MiniLM and hash; the tiny models record their own.
    config["server"]["canary"]["strict"] = False
    small = {"num_cpus": 0.25}
    config["backends"].update(
        siglip2={"kind": "clip", "options": {"model": str(tiny["siglip2"])}, "resources": small},
        bge={"kind": "bge-m3", "options": {"model": str(tiny["bge"])}, "resources": small},
        down={
            "kind": "faulty-hash",
            "options": {"fault": "unavailable", "dimensions": 64},
            "resources": {"num_cpus": 0},
        },
    )
    config["models"].update(
        siglip2={"chain": ["siglip2"]},
        bge={"chain": ["bge"]},
        # The primary is down; the hash fallback is another space, allowed explicitly.
        guarded={"chain": ["down", "hash"], "allow_cross_space": True},
    )
    return config


@pytest.fixture(scope="module")
def url(deploy, tiny, tmp_path_factory) -> str:
    return deploy(served_config(tiny, tmp_path_factory.mktemp("state")))


@pytest.fixture(scope="module")
def client(url: str) -> EmbedClient:
    with EmbedClient(url, model=MINILM) as client:
        yield client


def test_text_round_trip_with_metadata_equals_the_openai_sdk(client: EmbedClient, url) -> None:
    texts = paragraphs(12)
    result = client.embed_text(texts)
    sdk = OpenAI(base_url=f"{url}/v1", api_key="unused").embeddings.create(
        model=MINILM, input=texts
    )
    assert np.array_equal(result.vectors, np.array([d.embedding for d in sdk.data], np.float32))
    assert result.vectors.shape == (12, 384) and result.vectors.dtype == np.float32
    assert (result.model, result.backend, result.dimensions) == (MINILM, "minilm", 384)
    assert result.space_id == sdk.model_extra["space_id"]
    assert result.normalized and result.semantic and not result.fallback
    assert result.usage.prompt_tokens == sdk.usage.prompt_tokens


def test_registry_calls_and_health(client: EmbedClient) -> None:
    assert client.dimension() == 384
    assert client.max_tokens() == 256
    assert {card.id for card in client.models()} >= {MINILM, "hash", "siglip2", "bge"}
    health = client.health()
    assert health.live and health.ready
    assert health.serving_backends[MINILM] == ["minilm"]


def test_5000_texts_are_split_and_reassembled_in_order(client: EmbedClient) -> None:
    texts = [f"text number {i} of five thousand" for i in range(5000)]
    result = client.embed_text(texts, model="hash")
    reference = HashBackend({"dimensions": 384})
    reference.load()
    expected = reference.embed_batch([EmbedInput(text) for text in texts]).dense
    assert np.array_equal(result.vectors, expected)
    assert result.usage.prompt_tokens > 5000


def test_the_async_client_gets_the_same_vectors(client: EmbedClient, url: str) -> None:
    import asyncio

    texts = paragraphs(5)

    async def run() -> Any:
        async with AsyncEmbedClient(url, model=MINILM) as async_client:
            return await async_client.embed_text(texts, input_type="query")

    assert np.array_equal(asyncio.run(run()).vectors, client.embed_text(texts).vectors)


def test_images_round_trip_against_the_backend_in_process(
    client: EmbedClient, tiny, tmp_path: Path
) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(photo_file("chelsea"))
    result = client.embed_image([path, photo("coffee")], model="siglip2")
    local = ClipBackend({"model": str(tiny["siglip2"])})
    local.load()
    expected = local.embed_batch(
        [EmbedInput(image=photo("chelsea")), EmbedInput(image=photo("coffee"))]
    ).dense
    assert np.allclose(result.vectors, expected, atol=1e-5)
    card = next(card for card in client.models() if card.id == "siglip2")
    assert result.space_id == card.space_id and result.dimensions == expected.shape[1]
    text = client.embed_text(["a cat"], model="siglip2")
    assert text.space_id == result.space_id, "text and images of one model share its space"


def test_sparse_and_multivector_outputs(client: EmbedClient, tiny) -> None:
    texts = ["lexical weights of a text", "and of another one"]
    sparse = client.embed_sparse(texts, model="bge")
    multi = client.embed_multivector(texts, model="bge")
    local = BgeM3Backend({"model": str(tiny["bge"]), "device": "cpu"})
    local.load()
    from embedserve import OutputKind

    outputs = (OutputKind.SPARSE, OutputKind.MULTIVECTOR)
    expected = local.embed_batch([EmbedInput(t, outputs=outputs) for t in texts])
    for got, want in zip(sparse.vectors, expected.sparse, strict=True):
        assert np.array_equal(got.indices, want.indices)
        assert np.allclose(got.values, want.values, atol=1e-5)
    for got, want in zip(multi.vectors, expected.multivector, strict=True):
        assert np.allclose(got, want, atol=1e-5)
    assert sparse.space_id == multi.space_id and sparse.backend == "bge"


def test_the_guard_refuses_a_fallbacks_vectors_at_the_write(
    client: EmbedClient, tmp_path: Path
) -> None:
    """A chain whose primary is down answers from the hash fallback (another space): the
    answer says so, and an index bound to the primary's space refuses it."""
    card = next(card for card in client.models() if card.id == "guarded")
    served = client.embed_text(["a query"], model="guarded")
    assert served.fallback and served.backend == "hash"
    assert served.space_id != card.space_id and served.fallback_reasons
    guard = SpaceGuard(card.space_id)
    with pytest.raises(SpaceMismatch, match=f"space {served.space_id} cannot go into"):
        guard.check(served.space_id)

    documents = client.embed_text(["first document", "second document"])  # MiniLM
    index = FaissIndex.create(documents)
    index.add(documents, ["d1", "d2"])
    with pytest.raises(SpaceMismatch):
        index.add(served, ["fallback"])  # the hash space, with the same 384 dimensions
    with pytest.raises(SpaceMismatch):
        index.search(served)
    assert index.index.ntotal == 2 and index.ids == ["d1", "d2"]
    index.save(tmp_path / "faiss")
    reloaded = FaissIndex.load(tmp_path / "faiss")
    assert reloaded.search(client.embed_text(["first document"]), k=1)[0][0][0] == "d1"

    from qdrant_client import QdrantClient

    collection = QdrantIndex(QdrantClient(path=str(tmp_path / "qdrant")), "docs")
    collection.upsert(documents, ["d1", "d2"])
    with pytest.raises(SpaceMismatch):
        collection.upsert(served, ["fallback"])
    assert collection.client.count("docs").count == 2
    assert collection.search(client.embed_text(["second document"]), k=1)[0][0][0] == "d2"
    QdrantIndex(collection.client, "docs", allow_cross_space=True).upsert(served, ["fallback"])
    assert collection.client.count("docs").count == 3


def test_the_readme_example_runs_as_written(url: str, client: EmbedClient) -> None:
    """The README's Python client example, run in a fresh interpreter against this app
    (found through $EMBEDSERVE_URL, as `local()` documents), with only what `make run`
    installs importable, prints what the README says."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("<!-- readme-client-example -->\n```python\n", 1)[1]
    code, after = block.split("```\n", 1)
    shown = after.split("```\n", 2)[1].splitlines()
    result = subprocess.run(
        [sys.executable, "-c", blocking_prelude() + code],
        env={**os.environ, "EMBEDSERVE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    assert printed[0] == shown[0], "the README shows the real space id of the bundled MiniLM"
    assert printed[1].startswith("[[('d2', 0.")
    refused = shown[2].split("...")[0]
    assert printed[2].startswith(refused) and client.embed_text("x").space_id in printed[2]
    assert "using the server at" in result.stderr
