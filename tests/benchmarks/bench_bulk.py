"""Bulk encoding throughput and memory, measured on this machine (not a test).

    .venv/bin/python -m tests.benchmarks.bench_bulk --texts 10000 --hash-rows 1000000

1. MiniLM: a bulk job's rows/s against sentence-transformers encoding the same texts
   in-process (the ceiling), in one run. The ceiling is measured before and after every
   bulk job and each job is compared with the mean of the two around it, so load from
   other processes on the machine shows as a spread instead of skewing one side. The
   job's steady rate is what it records in its manifest: texts embedded between the
   end of its first batch and the end of its last, timed in the encoder.
2. `hash` (skipped with `--hash-rows 0`): a corpus of short texts (1,000,000 by default)
   written as JSONL and encoded by a bulk job; rows/s and the peak RSS of the driver
   (this process) and of each Ray worker process (read from /proc while the job runs).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

from embedserve.bulk.job import run_job
from embedserve.bulk.manifest import RunRecord
from embedserve.bulk.spec import InputSpec, JobSpec
from tests.benchmarks.bench_http_load import in_process
from tests.texts import paragraphs

_WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
]


class WorkerPeaks(threading.Thread):
    """Samples the peak RSS (VmHWM) of every `ray::` worker process once a second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    name = (status.parent / "cmdline").read_bytes().split(b"\0")[0].decode()
                    if name.startswith("ray::"):
                        found = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
                        if found:
                            key = f"{status.parent.name} {name}"
                            self.peaks[key] = max(self.peaks.get(key, 0), int(found.group(1)))
                except OSError:
                    continue


def write_jsonl(path: Path, texts: list[str]) -> None:
    """Texts as JSON lines with ids."""
    with path.open("w") as stream:
        for i, text in enumerate(texts):
            stream.write(json.dumps({"id": i, "text": text}) + "\n")


def write_short_texts(path: Path, rows: int) -> None:
    """`rows` short distinct texts, streamed to disk (never all in memory)."""
    with path.open("w") as stream:
        for i in range(rows):
            words = " ".join(_WORDS[(i >> shift) % len(_WORDS)] for shift in (0, 3, 7, 11))
            stream.write(json.dumps({"id": i, "text": f"{words} number {i}"}) + "\n")


def _spec(folder: Path, name: str, model: str, **fields: int) -> JobSpec:
    return JobSpec(
        input=InputSpec(path=str(folder / f"{name}.jsonl"), format="jsonl"),
        output=str(folder / f"{name}-out"),
        model=model,
        **fields,
    )


def bulk_minilm(folder: Path, name: str, batch_size: int) -> tuple[RunRecord, float]:
    """A MiniLM bulk job over `minilm.jsonl` into a new output: its run record and its
    wall-clock seconds (run_job from start to end, start-up included)."""
    spec = _spec(folder, "minilm", "all-minilm-l6-v2", batch_size=batch_size)
    spec = spec.model_copy(update={"output": str(folder / name)})
    started = time.perf_counter()
    manifest = run_job(spec, log=lambda line: print(f"  | {line}", flush=True))
    return manifest.runs[-1], time.perf_counter() - started


def compare_minilm(folder: Path, texts: list[str], rounds: int, batch_size: int) -> None:
    """Ceiling, job, ceiling, job, ..., ceiling: each job against the ceilings around it."""
    write_jsonl(folder / "minilm.jsonl", texts)
    ceilings = [in_process(texts)]
    print(f"MiniLM, {len(texts)} texts of 200-400 chars, bulk batch size {batch_size}:")
    print(f"  sentence-transformers in-process (batch 32): {ceilings[-1]:6.1f} rows/s")
    for round_ in range(1, rounds + 1):
        run, wall_s = bulk_minilm(folder, f"minilm-out-{round_}", batch_size)
        ceilings.append(in_process(texts))
        ceiling = (ceilings[-2] + ceilings[-1]) / 2
        steady = run.steady_texts_per_s or 0.0
        print(f"  bulk job {round_}:")
        print(f"    whole job (run_job wall):  {run.rows_processed / wall_s:6.1f} rows/s")
        print(f"    whole run (manifest):      {run.rows_per_s or 0:6.1f} rows/s")
        print(f"    start-up to first batch:   {run.first_batch_s or 0:6.1f} s")
        print(f"    steady (manifest):         {steady:6.1f} texts/s")
        print(f"  sentence-transformers in-process (batch 32): {ceilings[-1]:6.1f} rows/s")
        print(
            f"  ratio steady / ceiling {steady / ceiling:.2f} (ceiling mean {ceiling:.1f}), "
            f"whole job / ceiling {run.rows_processed / wall_s / ceiling:.2f}"
        )
    spread = f"{min(ceilings):.1f}-{max(ceilings):.1f}"
    print(f"  ceilings measured: {spread} rows/s (median {statistics.median(ceilings):.1f})")


def bulk_hash(folder: Path, rows: int, workers: int) -> tuple[RunRecord, dict[str, int]]:
    """A hash bulk job over `rows` short texts: its run record and worker peaks."""
    write_short_texts(folder / "hash.jsonl", rows)
    peaks = WorkerPeaks()
    peaks.start()
    manifest = run_job(_spec(folder, "hash", "hash", batch_size=4096, workers=workers))
    peaks.stop.set()
    return manifest.runs[-1], peaks.peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=2000, help="MiniLM texts (0: skip)")
    parser.add_argument("--rounds", type=int, default=1, help="MiniLM bulk jobs")
    parser.add_argument("--batch-size", type=int, default=512, help="MiniLM bulk batch size")
    parser.add_argument("--hash-rows", type=int, default=1_000_000, help="0: skip")
    parser.add_argument("--hash-workers", type=int, default=2)
    args = parser.parse_args()
    import ray

    ray.init(address="local", include_dashboard=False)
    base = paragraphs(300, min_chars=200, max_chars=400)
    texts = [f"{base[i % len(base)]} ({i})" for i in range(args.texts)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if texts:
            compare_minilm(folder, texts, args.rounds, args.batch_size)
        if args.hash_rows:
            run, peaks = bulk_hash(folder, args.hash_rows, args.hash_workers)
            report_hash(args.hash_rows, args.hash_workers, run, peaks)


def report_hash(rows: int, workers: int, run: RunRecord, peaks: dict[str, int]) -> None:
    """The hash run's rates and the peak memory of the driver and the workers."""
    driver_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"hash, {rows} short texts, {workers} workers:")
    steady = run.steady_texts_per_s or 0.0
    print(f"  whole run {run.rows_per_s or 0:8.1f} rows/s, steady {steady:8.1f} texts/s")
    print(f"  peak RSS driver: {driver_mib:.0f} MiB")
    for name, kib in sorted(peaks.items(), key=lambda item: -item[1])[:6]:
        print(f"  peak RSS {name[:60]}: {kib / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
