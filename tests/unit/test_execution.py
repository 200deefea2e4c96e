"""The choice of an exported runtime and precision (`runtime: auto`, `precision: auto`)
from the CPU's flags and the fidelity gate; the models tests run it on real weights."""

from __future__ import annotations

import pytest

from embedserve.plugins.cpu_features import CPU_FLAGS_ENV, CpuFeatures
from embedserve.plugins.execution import Candidate, bar, candidates, choose
from embedserve.plugins.onnx_runtime import OnnxQualityError

# The flags of the machine the issue measured (AMD EPYC), and of one without AVX-512.
EPYC = CpuFeatures(frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}))
AVX2 = CpuFeatures(frozenset({"avx2", "fma"}))


def names(found: list[Candidate]) -> list[str]:
    return [str(candidate) for candidate in found]


def test_auto_tries_bf16_first_only_where_the_cpu_computes_it() -> None:
    assert names(candidates("auto", "auto", EPYC, openvino=True)) == [
        "openvino bf16",
        "onnxruntime int8",
        "openvino fp32",
        "onnxruntime fp32",
    ]
    # Without bf16 or VNNI instructions only float32 is left.
    assert names(candidates("auto", "auto", AVX2, openvino=True)) == [
        "openvino fp32",
        "onnxruntime fp32",
    ]
    assert names(candidates("auto", "auto", EPYC, openvino=False)) == [
        "onnxruntime int8",
        "onnxruntime fp32",
    ]


def test_an_explicit_precision_or_runtime_narrows_the_candidates() -> None:
    assert names(candidates("auto", "fp32", EPYC, openvino=True)) == [
        "openvino fp32",
        "onnxruntime fp32",
    ]
    # Asked for, bf16 and fp16 run even where the CPU emulates them.
    assert names(candidates("openvino", "bf16", AVX2, openvino=True)) == ["openvino bf16"]
    assert names(candidates("openvino", "fp16", AVX2, openvino=True)) == ["openvino fp16"]
    assert names(candidates("openvino", "auto", EPYC, openvino=True)) == [
        "openvino bf16",
        "openvino fp32",
    ]
    assert names(candidates("onnx", "auto", EPYC, openvino=True)) == ["onnxruntime fp32"]
    assert names(candidates("onnx-int8", "auto", AVX2, openvino=True)) == ["onnxruntime int8"]


def test_the_gate_bars() -> None:
    assert bar(Candidate("openvino", "fp32"), "auto", 0.9999) == 0.99999
    assert bar(Candidate("openvino", "bf16"), "auto", 0.9995) == 0.9995
    assert bar(Candidate("onnxruntime", "int8"), "auto", 0.9999) == 0.9999
    # int8 asked for is a space of its own, with a looser bar.
    assert bar(Candidate("onnxruntime", "int8"), "onnx-int8", 0.9999) == 0.99


def test_choose_takes_the_first_candidate_that_passes() -> None:
    measured = {"openvino bf16": 0.9993, "onnxruntime int8": 0.993, "openvino fp32": 1.0}
    built: list[str] = []

    def build(candidate: Candidate) -> tuple[object, float]:
        built.append(str(candidate))
        return f"runtime of {candidate}", measured[str(candidate)]

    options = candidates("auto", "auto", EPYC, openvino=True)
    choice = choose(options, build, lambda c: bar(c, "auto", 0.9999), "why")
    assert str(choice.candidate) == "openvino fp32" and built == names(options)[:3]
    assert choice.encoder == "runtime of openvino fp32"
    assert choice.execution.precision == "fp32" and choice.execution.min_cosine == 1.0
    assert "openvino bf16 (worst probe cosine 0.999300 < 0.9999)" in choice.execution.reason


def test_choose_refuses_to_serve_when_nothing_passes() -> None:
    options = [Candidate("onnxruntime", "fp32")]
    with pytest.raises(OnnxQualityError, match=r"onnxruntime fp32 \(worst probe cosine 0\.99"):
        choose(options, lambda c: (None, 0.99), lambda c: bar(c, "auto", 0.9999), "why")


def test_cpu_flags_come_from_cpuinfo_or_the_override(monkeypatch) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2 amx_bf16 avx_vnni")
    forced = CpuFeatures.detect()
    assert forced.native("bf16") and forced.native("int8") and not forced.native("fp16")
    assert forced.evidence("bf16") == ["amx_bf16"]
    monkeypatch.delenv(CPU_FLAGS_ENV)
    assert CpuFeatures.detect().native("fp32")
