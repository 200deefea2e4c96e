"""The embedding cache in front of real replicas: a cached text is not embedded again."""

from __future__ import annotations

import pytest

from tests.integration.conftest import backend_handle, embed, hash_backend

pytestmark = pytest.mark.integration


def test_a_cached_text_never_reaches_the_replica(deploy) -> None:
    backend = {**hash_backend(), "canary": {"enabled": False}}  # no probe batches
    url = deploy(
        {
            "backends": {"hash": backend},
            "models": {"m": {"chain": ["hash"], "cache": {"enabled": True}}},
        }
    )
    first = embed(url, model="m", input=["one text", "two texts"]).json()
    records = backend_handle("hash").batch_records.remote().result()
    again = embed(url, model="m", input=["two texts", "one text", "three"]).json()
    new_records = backend_handle("hash").batch_records.remote().result()[len(records) :]
    assert sum(record["items"] for record in new_records) == 1  # only "three"
    assert again["data"][1]["embedding"] == first["data"][0]["embedding"]
    assert again["data"][0]["embedding"] == first["data"][1]["embedding"]
