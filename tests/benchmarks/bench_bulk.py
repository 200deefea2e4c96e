"""Bulk encoding throughput and memory, measured on this machine (not a test).

    .venv/bin/python -m tests.benchmarks.bench_bulk --texts 2000 --hash-rows 1000000

1. MiniLM: a bulk job's steady rows/s against sentence-transformers encoding the same
   texts in-process (the ceiling), both in this run.
2. `hash`: a corpus of short texts (1,000,000 by default) written as JSONL and encoded
   by a bulk job; rows/s and the peak RSS of the driver (this process) and of each
   Ray worker process (read from /proc while the job runs).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import tempfile
import threading
import time
from pathlib import Path

from serve_app.bulk.job import run_job
from serve_app.bulk.spec import InputSpec, JobSpec
from tests.benchmarks.bench_http_load import in_process
from tests.texts import paragraphs

_PROGRESS = re.compile(r"progress (\d+)/")
_DONE = re.compile(r"done: (\d+) embedded")
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


class SteadyRate:
    """Rows/s between the first and last progress lines: without start-up and load."""

    def __init__(self) -> None:
        self.points: list[tuple[float, int]] = []

    def __call__(self, line: str) -> None:
        # The final line counts too: slow batches may leave a single progress line.
        found = _PROGRESS.match(line) or _DONE.match(line)
        if found:
            self.points.append((time.monotonic(), int(found.group(1))))
        print(line, flush=True)

    @property
    def rows_per_s(self) -> float | None:
        if len(self.points) < 2:
            return None
        (t0, rows0), (t1, rows1) = self.points[0], self.points[-1]
        return (rows1 - rows0) / (t1 - t0)


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


def bulk_minilm(folder: Path, texts: list[str]) -> SteadyRate:
    """A MiniLM bulk job over `texts`; its steady rate."""
    write_jsonl(folder / "minilm.jsonl", texts)
    rate = SteadyRate()
    run_job(_spec(folder, "minilm", "all-minilm-l6-v2", batch_size=256), log=rate)
    return rate


def bulk_hash(folder: Path, rows: int, workers: int) -> tuple[float, float, dict[str, int]]:
    """A hash bulk job over `rows` short texts: job rows/s, steady rows/s, worker peaks."""
    write_short_texts(folder / "hash.jsonl", rows)
    peaks = WorkerPeaks()
    peaks.start()
    rate = SteadyRate()
    manifest = run_job(_spec(folder, "hash", "hash", batch_size=4096, workers=workers), log=rate)
    peaks.stop.set()
    return manifest.runs[-1].rows_per_s or 0.0, rate.rows_per_s or 0.0, peaks.peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=2000, help="MiniLM texts")
    parser.add_argument("--hash-rows", type=int, default=1_000_000)
    parser.add_argument("--hash-workers", type=int, default=2)
    args = parser.parse_args()
    import ray

    ray.init(address="local", include_dashboard=False)
    base = paragraphs(300, min_chars=200, max_chars=400)
    texts = [f"{base[i % len(base)]} ({i})" for i in range(args.texts)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        minilm = bulk_minilm(folder, texts)
        ceiling = in_process(texts)
        print(f"MiniLM, {len(texts)} texts of 200-400 chars:")
        print(f"  bulk job (steady):         {minilm.rows_per_s or 0:8.1f} rows/s")
        print(f"  sentence-transformers:     {ceiling:8.1f} rows/s (in-process, batch 32)")
        print(f"  ratio bulk / ceiling:      {(minilm.rows_per_s or 0) / ceiling:8.2f}")
        job_rate, steady, peaks = bulk_hash(folder, args.hash_rows, args.hash_workers)
    driver_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"hash, {args.hash_rows} short texts, {args.hash_workers} workers:")
    print(f"  whole run {job_rate:8.1f} rows/s, steady {steady:8.1f} rows/s")
    print(f"  peak RSS driver: {driver_mib:.0f} MiB")
    for name, kib in sorted(peaks.items(), key=lambda item: -item[1])[:6]:
        print(f"  peak RSS {name[:60]}: {kib / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
