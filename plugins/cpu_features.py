"""What the machine a replica starts on offers: the CPU's instruction sets (which
precisions it computes natively), whether a GPU is visible, and the replica's threads.

Read without torch, so a replica that serves through ONNX Runtime or OpenVINO never
imports it. `EMBEDSERVE_CPU_FLAGS` replaces the flags read from `/proc/cpuinfo` (a
space-separated list, as that file writes them): a test or an operator can make a
replica choose as it would on another CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CPU_FLAGS_ENV = "EMBEDSERVE_CPU_FLAGS"
_CPUINFO = Path("/proc/cpuinfo")
# A precision is native where one of these flags is present; elsewhere it is emulated
# (or converted back to float32) and slower than float32.
_NATIVE = {
    "bf16": ("avx512_bf16", "amx_bf16"),
    "fp16": ("avx512_fp16", "amx_fp16"),
    "int8": ("avx512_vnni", "avx_vnni", "amx_int8"),
}


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's feature flags and the precisions they make fast."""

    flags: frozenset[str]

    @classmethod
    def detect(cls) -> CpuFeatures:
        """The flags of this machine's CPU, or those `EMBEDSERVE_CPU_FLAGS` names."""
        override = os.environ.get(CPU_FLAGS_ENV)
        if override is not None:
            return cls(frozenset(override.split()))
        try:
            text = _CPUINFO.read_text()
        except OSError:  # not Linux: no flags known, float32 only
            return cls(frozenset())
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return cls(frozenset(value.split()))
        return cls(frozenset())

    def native(self, precision: str) -> bool:
        """Whether `precision` (fp32, bf16, fp16, int8) has instructions of its own here."""
        return precision == "fp32" or any(flag in self.flags for flag in _NATIVE[precision])

    def evidence(self, precision: str) -> list[str]:
        """The flags that make `precision` native here (for the choice's explanation)."""
        return sorted(flag for flag in _NATIVE.get(precision, ()) if flag in self.flags)


def replica_threads() -> int:
    """Threads for the replica's runtime: Ray sets `OMP_NUM_THREADS` to the replica's
    whole reserved CPUs; outside Ray, the CPUs this process may run on."""
    configured = os.environ.get("OMP_NUM_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cuda_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process, without importing torch: the
    driver lists a GPU and `CUDA_VISIBLE_DEVICES` (Ray sets it per replica) hides none."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())
