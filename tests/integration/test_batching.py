"""Dynamic batching in real replicas: concurrent requests share batches within limits."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.integration.conftest import backend_handle, hash_backend
from tests.texts import paragraphs

pytestmark = pytest.mark.integration


def config(**batching) -> dict:
    # No canary: its probe batches would mix into the batch records under test.
    backend = {
        **hash_backend(),
        "batching": batching,
        "max_ongoing_requests": 64,
        "canary": {"enabled": False},
    }
    return {"backends": {"hash": backend}, "models": {"hash": {"chain": ["hash"]}}}


async def _concurrent(url: str, texts: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(
            *(client.post("/v1/embeddings", json={"model": "hash", "input": t}) for t in texts)
        )


def records() -> list[dict]:
    return backend_handle("hash").batch_records.remote().result()


def test_concurrent_requests_are_batched_together(deploy) -> None:
    url = deploy(config(max_batch_size=64, batch_wait_timeout_s=0.5))
    texts = paragraphs(12)
    responses = asyncio.run(_concurrent(url, texts))
    assert all(r.status_code == 200 for r in responses)
    batches = records()
    assert sum(b["items"] for b in batches) == 12
    assert max(b["chunks"] for b in batches) >= 2, batches


def test_batches_respect_the_token_budget(deploy) -> None:
    url = deploy(config(max_batch_size=64, max_batch_tokens=40, batch_wait_timeout_s=0.2))
    before = len(records())
    texts = [f"word {i} " * 5 for i in range(10)]  # 10 or 11 tokens each
    response = httpx.post(f"{url}/v1/embeddings", json={"model": "hash", "input": texts})
    assert response.status_code == 200
    batches = records()[before:]
    assert sum(b["items"] for b in batches) == 10
    assert all(b["tokens"] <= 40 for b in batches), batches
    assert len(batches) >= 3
