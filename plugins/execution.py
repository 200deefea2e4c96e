"""Which exported runtime and precision a CPU replica serves with, chosen at load.

The candidates are tried in `CPU_PREFERENCE` order, fastest first, and the first whose
canary-probe vectors pass the fidelity gate against torch's float32 vectors serves. The
order is fixed rather than timed at each start: a start-up timing on a loaded machine
(replicas start while others serve) ranks candidates by the noise of the moment. It is
the order `tests/benchmarks/bench_runtimes.py` measured (MiniLM, 2 threads, 256 chunks
of ~64 tokens, batch 32, per-batch interleaved rounds on a shared AMD EPYC with
avx512_bf16), in docs per CPU-second against ONNX Runtime float32: OpenVINO bf16
2.3-2.9x, ONNX Runtime int8 1.8-2.0x, OpenVINO float32 1.1-1.2x (OpenVINO fp16 the same
as its float32, hence never chosen); idle, the issue measured OpenVINO bf16 at 179-194
docs/s against ONNX Runtime float32's 89-91. A precision is a candidate only where the
CPU has instructions for it (`CpuFeatures.native`): emulated bf16 is slower than float32.

The gate: float32 candidates must reach `FLOAT32_MIN_COSINE` (they differ from torch
by rounding only; less means a broken export), others the backend's `min_cosine`
(default 0.9999), except int8 asked for explicitly (`runtime: onnx-int8`), a space of its
own with the looser `INT8_MIN_COSINE`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from embedserve import Execution
from embedserve.plugins import onnx_runtime
from embedserve.plugins.cpu_features import CpuFeatures, replica_threads
from embedserve.plugins.onnx_runtime import ExportedModel, OnnxQualityError
from embedserve.plugins.openvino_runtime import (
    OpenVinoTransformer,
    openvino_installed,
    require_openvino,
)
from embedserve.plugins.st_pipeline import PipelineSpec, TextEncoder
from embedserve.runtime.canary import DEFAULT_PROBES

FLOAT32_MIN_COSINE = 0.99999
INT8_MIN_COSINE = 0.99
DEFAULT_MIN_COSINE = 0.9999


@dataclass(frozen=True)
class Candidate:
    """One runtime and precision an exported model may run with."""

    runtime: str  # onnxruntime or openvino
    precision: str  # fp32, bf16, fp16, int8

    def __str__(self) -> str:
        return f"{self.runtime} {self.precision}"


CPU_PREFERENCE = (
    Candidate("openvino", "bf16"),
    Candidate("onnxruntime", "int8"),
    Candidate("openvino", "fp32"),
    Candidate("onnxruntime", "fp32"),
)
# Never chosen by `auto`: no faster than OpenVINO's float32 on a CPU with avx512_fp16
# (1.09-1.22x ONNX Runtime float32 per CPU-second, against 1.09-1.24x), so only an
# explicit `precision: fp16` runs it.
EXPLICIT_ONLY = (Candidate("openvino", "fp16"),)
# `runtime` option -> the runtimes it allows.
_RUNTIMES = {
    "auto": ("openvino", "onnxruntime"),
    "onnx": ("onnxruntime",),
    "onnx-int8": ("onnxruntime",),
    "openvino": ("openvino",),
}


def candidates(runtime: str, precision: str, cpu: CpuFeatures, openvino: bool) -> list[Candidate]:
    """The candidates for the `runtime` and `precision` options on `cpu`, in preference
    order; `openvino` says whether OpenVINO is installed."""
    if runtime == "onnx-int8":
        return [Candidate("onnxruntime", "int8")]
    allowed = _RUNTIMES[runtime] if openvino else ("onnxruntime",)
    pool = CPU_PREFERENCE if precision == "auto" else CPU_PREFERENCE + EXPLICIT_ONLY
    return [
        candidate
        for candidate in pool
        if candidate.runtime in allowed
        and (candidate.precision == precision or precision == "auto")
        # What is asked for explicitly runs even where it is emulated.
        and (cpu.native(candidate.precision) or precision != "auto")
        and (candidate.precision != "int8" or runtime == "auto")
    ]


def bar(candidate: Candidate, runtime: str, min_cosine: float) -> float:
    """The worst probe cosine to torch's float32 vectors that `candidate` must reach."""
    if candidate.precision == "fp32":
        return FLOAT32_MIN_COSINE
    if runtime == "onnx-int8":
        return INT8_MIN_COSINE
    return min_cosine


@dataclass(frozen=True)
class Choice:
    """The candidate that serves, its encoder and how it was chosen."""

    candidate: Candidate
    encoder: Any
    execution: Execution


def choose(
    options: Sequence[Candidate],
    build: Callable[[Candidate], tuple[Any, float]],
    bars: Callable[[Candidate], float],
    why: str,
) -> Choice:
    """The first of `options` whose worst probe cosine to torch's float32 vectors (`build`
    returns it with the candidate's encoder) passes its bar.

    Raises:
        OnnxQualityError: none passes; the message lists each one's worst cosine.
    """
    rejected: list[str] = []
    for candidate in options:
        encoder, cosine = build(candidate)
        if cosine >= bars(candidate):
            if rejected:
                why += f"; the gate refused {', '.join(rejected)}"
            execution = Execution(
                runtime=candidate.runtime,
                precision=candidate.precision,
                min_cosine=round(cosine, 6),
                reason=why,
            )
            return Choice(candidate, encoder, execution)
        rejected.append(f"{candidate} (worst probe cosine {cosine:.6f} < {bars(candidate)})")
    raise OnnxQualityError(
        "no runtime passed the fidelity gate against torch's float32 vectors: "
        f"{'; '.join(rejected) or 'no candidate'}; serve this model with `runtime: torch`"
    )


def choose_exported(
    spec: PipelineSpec,
    runtime: str,
    precision: str,
    min_cosine: float,
    batch: int,
    export: Callable[[str], ExportedModel],
) -> Choice:
    """The encoder a CPU replica serves `spec`'s model with, for the backend's `runtime`,
    `precision` and `min_cosine`; `export` gives the cached export of a recipe (built by
    the export subprocess where missing).

    Raises:
        BackendUnavailable: the runtime asked for is not installed.
        OnnxQualityError: no candidate passes the gate.
    """
    onnx_runtime.require_onnxruntime(runtime)
    if runtime == "openvino":
        require_openvino()
    cpu = CpuFeatures.detect()
    options = candidates(runtime, precision, cpu, openvino_installed())
    exports: dict[str, ExportedModel] = {}

    def build(candidate: Candidate) -> tuple[TextEncoder, float]:
        recipe = _recipe(candidate)
        if recipe not in exports:
            exports[recipe] = export(recipe)
        encoder = TextEncoder(spec, _runtime_for(candidate, exports[recipe]))
        probes = encoder.encode(list(DEFAULT_PROBES), batch)
        return encoder, onnx_runtime.worst_cosine(exports[recipe].reference, probes)

    native = ", ".join(f"{p} {'/'.join(cpu.evidence(p)) or 'no'}" for p in ("bf16", "fp16", "int8"))
    why = (
        f"runtime {runtime}, precision {precision} on a CPU with native {native}: the first "
        f"of [{', '.join(map(str, options))}] to pass the gate"
    )
    return choose(options, build, lambda c: bar(c, runtime, min_cosine), why)


def _recipe(candidate: Candidate) -> str:
    """The export a candidate runs: the int8 one, or the float32 one every other reads."""
    if candidate.precision == "int8":
        return onnx_runtime.INT8_RECIPE
    return onnx_runtime.FLOAT32_RECIPE


def _runtime_for(
    candidate: Candidate, exported: ExportedModel
) -> onnx_runtime.OnnxTransformer | OpenVinoTransformer:
    # Threads: the replica's reserved CPUs (Ray's OMP_NUM_THREADS), as torch uses.
    if candidate.runtime == "onnxruntime":
        return onnx_runtime.OnnxTransformer(exported.path, threads=replica_threads())
    return OpenVinoTransformer(
        exported.path, candidate.precision, replica_threads(), exported.compiled_cache
    )
