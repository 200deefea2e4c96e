"""A tiny OpenCLIP `open-clip` backend deployed on Ray: texts and images over HTTP match
open_clip's own `encode_text` / `encode_image` on the same weights, in one space, with
the vector metadata."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from embedserve.config import parse_config
from tests.integration.conftest import embed
from tests.models.test_open_clip import (
    NAME,
    PHOTOS,
    TEXTS,
    cosines,
    open_clip_reference,
    reference_images,
    reference_texts,
)
from tests.models.tiny import build_open_clip, photo_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return build_open_clip(tmp_path_factory.mktemp("open-clip"), NAME)


@pytest.fixture(scope="module")
def config(files, tmp_path_factory) -> dict:
    model_config_file, weights = files
    options = {
        "model": NAME,
        "pretrained": str(weights),
        "model_config_file": str(model_config_file),
    }
    return {
        "server": {"state_dir": str(tmp_path_factory.mktemp("state"))},
        "backends": {
            "open-clip": {"kind": "open-clip", "options": options, "resources": {"num_cpus": 0.5}}
        },
        "models": {"open-clip": {"chain": ["open-clip"]}},
    }


@pytest.fixture(scope="module")
def url(deploy, config) -> str:
    return deploy(config)


@pytest.fixture(scope="module")
def reference(files):
    return open_clip_reference(files)


def native(url: str, items: list[dict]) -> httpx.Response:
    """POST /v1/embed."""
    return httpx.post(f"{url}/v1/embed", json={"model": "open-clip", "items": items}, timeout=120)


def png(name: str) -> str:
    return base64.b64encode(photo_file(name)).decode()


def test_texts_and_images_over_http_match_open_clip(url, reference, config) -> None:
    items = [{"text": text} for text in TEXTS] + [{"image": png(name)} for name in PHOTOS]
    response = native(url, items)
    assert response.status_code == 200, response.text
    body = response.json()
    served = np.array([row["dense"] for row in body["data"]], dtype=np.float32)
    assert cosines(served[:3], reference_texts(reference, TEXTS)).min() >= 0.9999
    assert cosines(served[3:], reference_images(reference, PHOTOS)).min() >= 0.9999
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    assert body["dimensions"] == 24 and body["normalized"] is True
    assert body["backend"] == "open-clip" and body["fallback"] is False
    assert body["space_id"] == parse_config(config).space_id("open-clip")
    assert response.headers["X-Embedding-Space-Id"] == body["space_id"]


def test_the_openai_route_serves_texts_and_images_in_one_space(url, reference) -> None:
    image = f"data:image/png;base64,{png('chelsea')}"
    response = embed(url, model="open-clip", input=["a cat", {"image": image}])
    assert response.status_code == 200, response.text
    body = response.json()
    text, picture = (np.array(row["embedding"], dtype=np.float32) for row in body["data"])
    assert cosines(text[None], reference_texts(reference, ["a cat"]))[0] >= 0.9999
    assert cosines(picture[None], reference_images(reference, ("chelsea",)))[0] >= 0.9999
    # One space: the served text-image similarity is the one open_clip's own vectors give.
    expected = (
        reference_texts(reference, ["a cat"])[0] @ reference_images(reference, ("chelsea",))[0]
    )
    assert abs(float(text @ picture) - float(expected)) < 1e-4


def test_models_lists_both_modalities_and_the_dimension(url, config) -> None:
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}
    served = models["open-clip"]
    assert served["dimensions"] == 24
    assert served["space_id"] == parse_config(config).space_id("open-clip")
    [backend] = served["chain"]
    assert backend["available"] is True and backend["max_input_tokens"] == 16
    assert set(backend["modalities"]) == {"text", "image"} and backend["normalized"] is True
