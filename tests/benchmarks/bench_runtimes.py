"""Runtime x precision, in-process: the MiniLM backend loaded as a replica loads it with
each runtime and precision, on the same 256 chunks of ~64 tokens of `pydoc_data.topics`,
in batches of 32, on 2 threads, in interleaved rounds (each round times every
configuration once, so a load spike on a shared machine hits all of them alike).

Prints docs/s per round, the median, its ratio to ONNX Runtime float32 within each
round, and the worst cosine of each configuration's vectors to torch float32's; what
`runtime: auto` / `precision: auto` chose on this CPU; optionally writes JSON.

    .venv/bin/python -m tests.benchmarks.bench_runtimes [--rounds 3] [--json out.json]

Figures, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

# Before numpy and the runtimes read them: the replica's 2 reserved CPUs.
THREADS = 2
os.environ["OMP_NUM_THREADS"] = str(THREADS)

import numpy as np  # noqa: E402

from embedserve import EmbedInput  # noqa: E402
from embedserve.plugins.onnx_runtime import worst_cosine  # noqa: E402
from embedserve.plugins.sentence_transformers_backend import (  # noqa: E402
    SentenceTransformersBackend,
)
from tests.benchmarks.bench_throughput import LENGTHS, MINILM_OPTIONS, chunks  # noqa: E402

BATCH = 32
TEXTS = 256
# name -> backend options; the names say runtime / precision.
CONFIGS = {
    "torch fp32": {"runtime": "torch"},
    "torch bf16": {"runtime": "torch", "dtype": "bfloat16"},
    "onnxruntime fp32": {"runtime": "onnx"},
    "onnxruntime int8": {"runtime": "onnx-int8"},
    "openvino fp32": {"runtime": "openvino", "precision": "fp32"},
    "openvino bf16": {"runtime": "openvino", "precision": "bf16"},
    "openvino fp16": {"runtime": "openvino", "precision": "fp16"},
    "auto": {"runtime": "auto"},
}
BASELINE = "onnxruntime fp32"


def load(options: dict) -> SentenceTransformersBackend:
    """The MiniLM backend with `options`, loaded."""
    backend = SentenceTransformersBackend({**MINILM_OPTIONS, **options})
    backend.load()
    return backend


def encode(
    backend: SentenceTransformersBackend, inputs: list[EmbedInput]
) -> tuple[float, np.ndarray]:
    """Seconds to embed `inputs` in batches of `BATCH`, and the vectors."""
    started = time.perf_counter()
    parts = [backend.embed_batch(inputs[s : s + BATCH]).dense for s in range(0, len(inputs), BATCH)]
    return time.perf_counter() - started, np.concatenate(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(THREADS)
    inputs = [EmbedInput(text) for text in chunks(LENGTHS["short"], TEXTS)]
    backends = {name: load(options) for name, options in CONFIGS.items()}
    vectors: dict[str, np.ndarray] = {}
    for name, backend in backends.items():  # warm-up, and the vectors compared
        vectors[name] = encode(backend, inputs)[1]
    rates: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(args.rounds):
        for name, backend in backends.items():
            rates[name].append(len(inputs) / encode(backend, inputs)[0])
    report(backends, rates, vectors, args.json)


def report(
    backends: dict[str, SentenceTransformersBackend],
    rates: dict[str, list[float]],
    vectors: dict[str, np.ndarray],
    json_path: str | None,
) -> None:
    """The table, and what `auto` chose."""
    rows = []
    print(f"MiniLM in-process, {TEXTS} chunks of ~64 tokens, batch {BATCH}, {THREADS} threads")
    print(
        f"{'runtime / precision':20s} {'docs/s per round':>26s} {'median':>7s} "
        f"{'x ' + BASELINE:>22s} {'min cos to fp32':>16s}"
    )
    for name, found in rates.items():
        ratios = [a / b for a, b in zip(found, rates[BASELINE], strict=True)]
        cosine = worst_cosine(vectors["torch fp32"], vectors[name])
        rows.append({"config": name, "docs_per_s": found, "ratios": ratios, "min_cosine": cosine})
        print(
            f"{name:20s} {' '.join(f'{r:7.1f}' for r in found):>26s} "
            f"{statistics.median(found):7.1f} "
            f"{' '.join(f'{r:.2f}' for r in ratios):>22s} {cosine:16.6f}"
        )
    chosen = backends["auto"].execution
    print(f"\nauto chose {chosen.runtime} {chosen.precision} (probe cosine {chosen.min_cosine})")
    print(f"  why: {chosen.reason}")
    if json_path:
        with open(json_path, "w") as stream:
            json.dump({"rows": rows, "auto": chosen.model_dump()}, stream, indent=2)


if __name__ == "__main__":
    main()
