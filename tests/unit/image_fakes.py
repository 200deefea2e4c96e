"""Deterministic multimodal backends for the image and native-API tests (no weights).

`pixel-hash` embeds texts with feature hashing and images with a colour histogram into
one space, and offers sparse and multi-vector outputs; `image-only` embeds images only.
They are registered through a plugin module, as a third-party backend would be.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

import embedserve.plugins.hash_backend
from embedserve import (
    BackendCapabilities,
    BackendRegistry,
    EmbeddingBatch,
    EmbedInput,
    Modality,
    OutputKind,
    PluginSource,
    SparseVector,
    hookimpl,
)
from embedserve.plugins.hash_backend import HashBackend


def histogram(image: np.ndarray, dimensions: int) -> np.ndarray:
    """A normalised histogram of an image's channel values in `dimensions` bins."""
    counts = np.histogram(image, bins=dimensions, range=(0, 256))[0].astype(np.float32)
    return counts / np.linalg.norm(counts)


class PixelHash(HashBackend):
    """Texts by feature hashing, images by colour histogram; sparse: word ids."""

    kind = "pixel-hash"
    modalities = (Modality.TEXT, Modality.IMAGE)
    outputs = (OutputKind.DENSE, OutputKind.SPARSE, OutputKind.MULTIVECTOR)

    @property
    def capabilities(self) -> BackendCapabilities:
        return super().capabilities.model_copy(
            update={"modalities": self.modalities, "outputs": self.outputs}
        )

    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        dimensions = self.options.dimensions
        dense = super().embed_batch(inputs).dense
        for row, item in enumerate(inputs):
            if item.image is not None:
                dense[row] = histogram(item.image, dimensions)
        sparse = [
            self._sparse(item) if OutputKind.SPARSE in item.outputs else None for item in inputs
        ]
        multivector = [
            np.stack([dense[row], -dense[row]]) if OutputKind.MULTIVECTOR in item.outputs else None
            for row, item in enumerate(inputs)
        ]
        return EmbeddingBatch(dense=dense, sparse=sparse, multivector=multivector)

    @staticmethod
    def _sparse(item: EmbedInput) -> SparseVector:
        words = sorted(set(item.text.lower().split()))
        return SparseVector(
            indices=np.arange(len(words), dtype=np.int64),
            values=np.ones(len(words), dtype=np.float32),
            tokens=tuple(words),
        )


class ImageOnly(PixelHash):
    """Images only."""

    kind = "image-only"
    modalities = (Modality.IMAGE,)


@hookimpl
def register_backends(register) -> None:
    register(PixelHash)
    register(ImageOnly)


def image_registry(monkeypatch: pytest.MonkeyPatch) -> BackendRegistry:
    """Make config parsing see the built-in `hash` and these backends."""
    import sys

    registry = BackendRegistry()
    registry.add_plugin(embedserve.plugins.hash_backend, PluginSource("hash"))
    registry.add_plugin(sys.modules[__name__], PluginSource("image-fakes"))
    monkeypatch.setattr("embedserve.config.default_registry", lambda: registry)
    return registry
