"""A tiny SigLIP 2 `clip` backend deployed on Ray: an image over HTTP (JSON, multipart
and the OpenAI SDK) lands in the same space as text, with the vector metadata."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from embedserve import EmbedInput
from embedserve.plugins.clip_backend import ClipBackend
from tests.integration.conftest import embed
from tests.models.tiny import build_clip_family, photo, photo_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_clip_family("siglip2", tmp_path_factory.mktemp("siglip2"))


@pytest.fixture(scope="module")
def url(deploy, folder, tmp_path_factory) -> str:
    config = {
        "server": {"state_dir": str(tmp_path_factory.mktemp("state"))},
        "backends": {
            "siglip2": {
                "kind": "clip",
                "options": {"model": str(folder), "prompts": {"query": "a photo of {text}."}},
                "resources": {"num_cpus": 0.5},
            },
            "hash": {"kind": "hash", "options": {"dimensions": 32}, "resources": {"num_cpus": 0.1}},
        },
        "models": {"siglip2": {"chain": ["siglip2"]}, "hash": {"chain": ["hash"]}},
    }
    return deploy(config)


@pytest.fixture(scope="module")
def local(folder) -> ClipBackend:
    backend = ClipBackend({"model": str(folder)})
    backend.load()
    return backend


def test_an_image_over_http_matches_the_backend_in_process(url: str, local: ClipBackend) -> None:
    png = base64.b64encode(photo_file("chelsea")).decode()
    response = httpx.post(
        f"{url}/v1/embed",
        json={"model": "siglip2", "items": [{"text": "a cat"}, {"image": png}]},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dimensions"] == 32 and body["normalized"] and body["backend"] == "siglip2"
    assert response.headers["X-Embedding-Space-Id"] == body["space_id"]
    expected = local.embed_batch([EmbedInput("a cat"), EmbedInput(image=photo("chelsea"))]).dense
    served = np.array([row["dense"] for row in body["data"]])
    assert np.allclose(served, expected, atol=1e-5)


def test_multipart_upload_and_query_prompt(url: str, local: ClipBackend) -> None:
    files = [
        ("text", (None, "cat")),
        ("image", ("c.jpg", photo_file("coffee", "JPEG"), "image/jpeg")),
    ]
    form = {"model": "siglip2", "input_type": "query"}
    response = httpx.post(f"{url}/v1/embed", data=form, files=files, timeout=120)
    assert response.status_code == 200, response.text
    text_vector = np.array(response.json()["data"][0]["dense"])
    expected = local.embed_batch([EmbedInput("a photo of cat.")]).dense[0]
    assert np.allclose(text_vector, expected, atol=1e-5)


def test_openai_sdk_sends_image_items(url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    png = base64.b64encode(photo_file("astronaut")).decode()
    result = client.embeddings.create(
        model="siglip2", input=["an astronaut", {"image": f"data:image/png;base64,{png}"}]
    )
    assert [len(item.embedding) for item in result.data] == [32, 32]
    assert result.model_extra["dimensions"] == 32


def test_images_to_a_text_model_and_corrupt_images_are_400s(url: str) -> None:
    png = base64.b64encode(photo_file("camera")).decode()
    response = embed(url, model="hash", input=[{"image": png}])
    assert response.status_code == 400 and response.json()["error"]["param"] == "input[0]"
    corrupt = base64.b64encode(photo_file("camera")[:200]).decode()
    response = embed(url, model="siglip2", input=["ok", {"image": corrupt}])
    assert response.status_code == 400 and response.json()["error"]["param"] == "input[1]"
