"""A sustained mixed load against a running embedserve (`make run`): valid, invalid and
oversized requests to two models. Prints requests served, errors by status, p50/p99
latency of valid requests, and the memory (RSS) of the router and each replica at start
and end, with the growth ratio. Memory is read when the load starts (a cold replica) and
again after `--warmup-minutes` of the same load: a model replica's allocator grows while
it meets new batch shapes, and steady-state growth is what tells a leak.

    .venv/bin/python -m tests.benchmarks.bench_soak --minutes 10 --warmup-minutes 1

Figures, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections import Counter

import httpx
import psutil

from tests.texts import paragraphs

MINILM = "all-minilm-l6-v2"


def request_mix(texts: list[str]) -> list[tuple[str, dict, bool]]:
    """(kind, body, valid) of each request shape in the mix."""
    return [
        ("minilm-1", {"model": MINILM, "input": texts[0]}, True),
        ("minilm-8", {"model": MINILM, "input": texts[:8]}, True),
        ("hash-32", {"model": "hash", "input": texts[:32]}, True),
        ("empty-text", {"model": MINILM, "input": ""}, False),
        ("unknown-model", {"model": "nope", "input": "x"}, False),
        ("bad-dimensions", {"model": MINILM, "input": "x", "dimensions": 7}, False),
        ("too-long", {"model": MINILM, "input": " ".join(texts) * 2}, False),
        ("too-large", {"model": "hash", "input": ["x" * 1024] * 20000}, False),
    ]


def serve_processes() -> dict[str, psutil.Process]:
    """The router and backend replica processes of the embedserve app, by name."""
    found = {}
    for process in psutil.process_iter(["cmdline"]):
        title = " ".join(process.info["cmdline"] or [])
        if title.startswith("ray::ServeReplica:embedserve:"):
            # The title names the method a replica runs, as in `minilm.check_health`.
            found[title.split(":")[-1].strip().split(".")[0]] = process
    return found


def rss_mib(processes: dict[str, psutil.Process]) -> dict[str, float]:
    return {name: p.memory_info().rss / 2**20 for name, p in processes.items()}


async def soak(url: str, seconds: float, concurrency: int) -> tuple[Counter, list[float]]:
    mix = request_mix(paragraphs(64))
    weights = [30, 10, 20, 5, 5, 5, 5, 2]
    statuses: Counter = Counter()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    rng = random.Random(0)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def worker() -> None:
            while time.monotonic() < deadline:
                kind, body, valid = rng.choices(mix, weights)[0]
                started = time.perf_counter()
                response = await client.post("/v1/embeddings", json=body)
                statuses[(kind, response.status_code)] += 1
                if valid and response.status_code == 200:
                    latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup-minutes", type=float, default=1)
    args = parser.parse_args()
    processes = serve_processes()
    cold = rss_mib(processes)
    asyncio.run(soak(args.url, args.warmup_minutes * 60, args.concurrency))
    before = rss_mib(processes)
    statuses, latencies = asyncio.run(soak(args.url, args.minutes * 60, args.concurrency))
    after = rss_mib(processes)
    total = sum(statuses.values())
    print(f"{total} requests in {args.minutes:g} min at concurrency {args.concurrency}")
    for (kind, status), count in sorted(statuses.items()):
        print(f"  {kind:15s} {status}: {count}")
    by_status = Counter()
    for (_, status), count in statuses.items():
        by_status[status] += count
    print("by status:", dict(sorted(by_status.items())))
    cuts = statistics.quantiles(latencies, n=100)
    print(f"valid requests: p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms")
    for name in sorted(processes):
        growth = after[name] / before[name] - 1
        print(
            f"  RSS {name:8s} cold {cold[name]:7.1f}, after warm-up {before[name]:7.1f} -> "
            f"{after[name]:7.1f} MiB at the end ({growth:+.1%})"
        )
    print("500s:", sum(c for (_, s), c in statuses.items() if s >= 500 and s not in (503, 504)))


if __name__ == "__main__":
    main()
