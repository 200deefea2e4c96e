"""`faulty-hash`: the real `hash` backend with an injected fault, for tests.

It shares the space of a `hash` backend with the same options, so a chain
`[faulty-hash, hash]` is a same-space chain whose first backend fails for real inside a
Ray Serve replica: it raises, answers NaN, is unavailable, is slow, or answers finite
unit vectors that are silently wrong (`perturb`). Or its `load` fails as a plugin's
load does in the field: an import that fails (`import-error`), an exception
(`load-raises`), a library of an incompatible version (`incompatible-library`), or an
allocation the operating system refuses (`out-of-memory`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from packaging.specifiers import SpecifierSet
from pydantic import Field

from embedserve import BackendUnavailable, EmbeddingBatch, EmbedInput, hookimpl
from embedserve.plugins.hash_backend import HashBackend, HashOptions


class FaultyHashOptions(HashOptions):
    """The `hash` options plus the fault to inject."""

    fault: Literal[
        "none",
        "raise",
        "nan",
        "unavailable",
        "slow",
        "perturb",
        "import-error",
        "load-raises",
        "incompatible-library",
        "out-of-memory",
    ] = "raise"
    fault_after_batches: int = Field(0, ge=0, description="Healthy batches before the fault.")
    slow_seconds: float = Field(5.0, ge=0)
    perturbation: float = Field(
        0.3, ge=0, description="`perturb`: how much seeded noise moves each vector."
    )


class FaultyHashBackend(HashBackend):
    """A hash backend that fails in a chosen way."""

    kind = "faulty-hash"
    description = "The hash backend with an injected fault (tests only)."
    Options = FaultyHashOptions
    options: FaultyHashOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._batches = 0

    def space_identity(self) -> dict[str, Any]:
        fault_fields = {"fault", "fault_after_batches", "slow_seconds", "perturbation"}
        hash_options = self.options.model_dump(exclude=fault_fields)
        return HashBackend(HashOptions(**hash_options)).space_identity()

    def load(self) -> None:
        fault = self.options.fault
        if fault == "unavailable":
            raise BackendUnavailable("faulty-hash was configured to be unavailable")
        if fault == "import-error":
            # A real import of a library that is not installed.
            importlib.import_module("embedserve_faults_missing_library")
        if fault == "load-raises":
            raise RuntimeError("faulty-hash: the model's weights did not load (injected)")
        if fault == "incompatible-library":
            _require("numpy", ">=99")
        if fault == "out-of-memory":
            # A real allocation, far beyond any address space: the allocator refuses it
            # and numpy raises MemoryError, as a model too big for the host does.
            np.empty(2**62, dtype=np.uint8)

    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        self._batches += 1
        batch = super().embed_batch(inputs)
        if self._batches <= self.options.fault_after_batches:
            return batch
        if self.options.fault == "raise":
            raise RuntimeError("faulty-hash injected failure")
        if self.options.fault == "nan":
            return EmbeddingBatch(dense=np.full_like(batch.dense, np.nan))
        if self.options.fault == "slow":
            time.sleep(self.options.slow_seconds)
        if self.options.fault == "perturb":
            return EmbeddingBatch(dense=self._perturbed(batch.dense))
        return batch

    def _perturbed(self, dense: np.ndarray) -> np.ndarray:
        """Finite, unit-length, right-sized, and wrong: silent corruption, like weights
        changed by a library upgrade."""
        noise = np.random.default_rng(7).standard_normal(dense.shape[1]).astype(np.float32)
        moved = dense + self.options.perturbation * noise / np.linalg.norm(noise)
        return moved / np.linalg.norm(moved, axis=1, keepdims=True)


def _require(distribution: str, specifier: str) -> None:
    """Refuse to load beside a version of `distribution` outside `specifier`, as plugins
    check the libraries they were written for."""
    installed = importlib.metadata.version(distribution)
    if installed not in SpecifierSet(specifier):
        raise ImportError(f"faulty-hash needs {distribution}{specifier}, found {installed}")


@hookimpl
def register_backends(register) -> None:
    """Register the fault-injecting backend."""
    register(FaultyHashBackend)
