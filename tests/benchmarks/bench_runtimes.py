"""Runtime x precision, in-process: the MiniLM backend loaded as a replica loads it with
each runtime and precision, on the same 256 chunks of ~64 tokens of `pydoc_data.topics`,
in batches of 32, on 2 threads, in interleaved rounds: within a round every batch is
run by every configuration in turn (the order rotating from batch to batch), so a load
spike on a shared machine hits all of them alike.

Prints per round docs/s (wall) and docs per CPU-second of this process (steadier on a
loaded machine: another process's load takes wall time, not this one's CPU), their
ratios to ONNX Runtime float32 within the round, and the worst cosine of each
configuration's vectors to torch float32's; what `runtime: auto` / `precision: auto`
chose on this CPU (it is one of the rows, so it is not timed again); optionally JSON.

    .venv/bin/python -m tests.benchmarks.bench_runtimes [--rounds 3] [--json out.json]

Figures, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
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
}
BASELINE = "onnxruntime fp32"


def load(options: dict) -> SentenceTransformersBackend:
    """The MiniLM backend with `options`, loaded."""
    backend = SentenceTransformersBackend({**MINILM_OPTIONS, **options})
    backend.load()
    return backend


def encode(backend: SentenceTransformersBackend, inputs: list[EmbedInput]) -> np.ndarray:
    """The vectors of `inputs`, in batches of `BATCH`."""
    parts = [backend.embed_batch(inputs[s : s + BATCH]).dense for s in range(0, len(inputs), BATCH)]
    return np.concatenate(parts)


def timed_round(
    backends: dict[str, SentenceTransformersBackend], inputs: list[EmbedInput]
) -> dict[str, tuple[float, float]]:
    """Wall and CPU seconds each backend spent on `inputs`, batch by batch in turn."""
    spent = {name: [0.0, 0.0] for name in backends}
    names = list(backends)
    for index, start in enumerate(range(0, len(inputs), BATCH)):
        batch = inputs[start : start + BATCH]
        for name in names[index % len(names) :] + names[: index % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            backends[name].embed_batch(batch)
            spent[name][0] += time.perf_counter() - wall
            spent[name][1] += time.process_time() - cpu
    return {name: (wall, cpu) for name, (wall, cpu) in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(THREADS)
    inputs = [EmbedInput(text) for text in chunks(LENGTHS["short"], TEXTS)]
    backends = {name: load(options) for name, options in CONFIGS.items()}
    # Warm-up, and the vectors compared.
    vectors = {name: encode(backend, inputs) for name, backend in backends.items()}
    rounds = [timed_round(backends, inputs) for _ in range(args.rounds)]
    report(load({"runtime": "auto"}), rounds, vectors, args.json)


def report(
    auto: SentenceTransformersBackend,
    rounds: list[dict[str, tuple[float, float]]],
    vectors: dict[str, np.ndarray],
    json_path: str | None,
) -> None:
    """The table, and what `auto` chose."""
    rows = []
    print(f"MiniLM in-process, {TEXTS} chunks of ~64 tokens, batch {BATCH}, {THREADS} threads")
    print("per round: docs/s (x onnxruntime fp32) | docs per CPU-s (x onnxruntime fp32)")
    for name in vectors:
        docs = [TEXTS / found[name][0] for found in rounds]
        per_cpu = [TEXTS / found[name][1] for found in rounds]
        ratios = [found[BASELINE][0] / found[name][0] for found in rounds]
        cpu_ratios = [found[BASELINE][1] / found[name][1] for found in rounds]
        cosine = worst_cosine(vectors["torch fp32"], vectors[name])
        rows.append(
            {
                "config": name,
                "docs_per_s": docs,
                "ratios": ratios,
                "docs_per_cpu_s": per_cpu,
                "cpu_ratios": cpu_ratios,
                "min_cosine": cosine,
            }
        )
        wall = " ".join(f"{d:6.1f} ({r:.2f})" for d, r in zip(docs, ratios, strict=True))
        cpu = " ".join(f"{d:6.1f} ({r:.2f})" for d, r in zip(per_cpu, cpu_ratios, strict=True))
        print(f"{name:17s} {wall} | {cpu} | min cos {cosine:.6f}")
    chosen = auto.execution
    print(f"\nauto chose {chosen.runtime} {chosen.precision} (probe cosine {chosen.min_cosine})")
    print(f"  why: {chosen.reason}")
    if json_path:
        with open(json_path, "w") as stream:
            json.dump({"rows": rows, "auto": chosen.model_dump()}, stream, indent=2)


if __name__ == "__main__":
    main()
