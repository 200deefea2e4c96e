"""Backpressure and replica death in real replicas.

A deliberately slow backend with a bounded queue: a burst beyond the bound is answered
503 `overloaded` with Retry-After (never 500), and another model keeps answering. A
backend replica killed during a bounded load: every answer is correct or a clean error.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from embedserve import EmbedInput
from embedserve.plugins.hash_backend import HashBackend
from tests.integration.conftest import hash_backend

pytestmark = pytest.mark.integration

SLOW = {
    "kind": "faulty-hash",
    "options": {"fault": "slow", "slow_seconds": 1.0},
    "batching": {"max_batch_size": 1},
    "max_ongoing_requests": 1,
    "max_queued_requests": 2,
    "canary": {"enabled": False},  # its probes would be slow too
    "resources": {"num_cpus": 0.1},
}


async def _post(client: httpx.AsyncClient, model: str, text: str) -> httpx.Response:
    return await client.post("/v1/embeddings", json={"model": model, "input": text})


async def _burst_and_fast_requests(url: str) -> tuple[list[httpx.Response], list[float]]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        burst = [asyncio.create_task(_post(client, "slow", f"text {i}")) for i in range(12)]
        await asyncio.sleep(0.3)
        latencies = []
        for i in range(5):  # while the slow backend is saturated
            started = time.perf_counter()
            response = await _post(client, "fast", f"fast text {i}")
            assert response.status_code == 200
            latencies.append(time.perf_counter() - started)
        return list(await asyncio.gather(*burst)), latencies


def test_a_burst_beyond_the_queue_is_503_with_retry_after(deploy) -> None:
    url = deploy(
        {
            "backends": {"slow": SLOW, "hash": hash_backend()},
            "models": {"slow": {"chain": ["slow"]}, "fast": {"chain": ["hash"]}},
        }
    )
    responses, fast_latencies = asyncio.run(_burst_and_fast_requests(url))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 1
    rejected = [r for r in responses if r.status_code == 503]
    assert rejected, "the queue bound held nothing back"
    for response in rejected:
        assert response.headers["retry-after"]
        assert response.json()["error"]["code"] == "overloaded"
    assert max(fast_latencies) < 1.0, fast_latencies  # not queued behind the slow model


def _replica_actor_names(backend: str) -> list[str]:
    import ray

    return [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == "serve" and f"#{backend}#" in actor["name"]
    ]


KILL_AFTER_ANSWERS = 50


async def _load_with_a_kill(url: str, texts: list[str]) -> tuple[list[httpx.Response], int]:
    """The answers to `texts` (8 in flight at a time), with a replica killed once
    `KILL_AFTER_ANSWERS` have come (a kill after a fixed delay could land after the last
    answer); also how many had come when it was killed."""
    import ray

    answered = 0
    enough = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        gate = asyncio.Semaphore(8)

        async def one(text: str) -> httpx.Response:
            nonlocal answered
            async with gate:
                response = await _post(client, "m", text)
            answered += 1
            if answered >= KILL_AFTER_ANSWERS:
                enough.set()
            return response

        tasks = [asyncio.create_task(one(text)) for text in texts]
        await enough.wait()
        answered_at_kill = answered
        victim = _replica_actor_names("hash")[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        return list(await asyncio.gather(*tasks)), answered_at_kill


def test_a_killed_replica_gives_only_correct_answers_or_clean_errors(deploy) -> None:
    backend = {**hash_backend(), "autoscaling": {"min_replicas": 2, "max_replicas": 2}}
    url = deploy({"backends": {"hash": backend}, "models": {"m": {"chain": ["hash"]}}})
    texts = [f"request number {i} about vectors" for i in range(300)]
    expected = HashBackend().embed_batch([EmbedInput(t) for t in texts]).dense
    responses, answered_at_kill = asyncio.run(_load_with_a_kill(url, texts))
    assert answered_at_kill < len(texts) - 100, "the kill came after most answers"
    errors = 0
    for text_vector, response in zip(expected, responses, strict=True):
        if response.status_code == 200:
            served = np.array(response.json()["data"][0]["embedding"], dtype=np.float32)
            assert float(served @ text_vector) >= 0.9999
        else:
            errors += 1
            assert response.status_code in (502, 503, 504)
            assert set(response.json()["error"]) >= {"message", "type", "code"}
    print(f"replica killed under load: {errors} clean errors of {len(texts)} requests")
    assert errors <= 8, f"{errors} errors"  # at most the requests in flight on the replica
    deadline = time.monotonic() + 60
    while len(_replica_actor_names("hash")) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert len(_replica_actor_names("hash")) == 2, "Serve replaced the killed replica"
    assert httpx.post(f"{url}/v1/embeddings", json={"model": "m", "input": "x"}).status_code == 200
