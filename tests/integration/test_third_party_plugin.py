"""A plugin from another distribution (tests/example_plugin), found through its entry
point and served over HTTP."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from embedserve_example import LetterFrequencyBackend

from embedserve import EmbedInput
from tests.integration.conftest import embed

pytestmark = pytest.mark.integration

CONFIG = {
    "backends": {"letters": {"kind": "letter-frequency", "resources": {"num_cpus": 0.1}}},
    "models": {"letters": {"chain": ["letters"]}},
}


def test_third_party_backend_is_served(deploy) -> None:
    url = deploy(CONFIG)
    texts = ["Hello, World", "embedding servers"]
    body = embed(url, model="letters", input=texts).json()
    served = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    expected = LetterFrequencyBackend().embed_batch([EmbedInput(t) for t in texts]).dense
    assert np.allclose(served, expected, atol=1e-7)
    assert body["backend"] == "letters" and body["dimensions"] == 26
    [model] = httpx.get(f"{url}/v1/models").json()["data"]
    assert model["chain"][0]["kind"] == "letter-frequency"
