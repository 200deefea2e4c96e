"""A complete third-party backend plugin: letter-frequency vectors.

Deterministic and tiny on purpose: it proves that a plugin installed as its own
distribution is found through the entry point and served over HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from embedserve import (
    Backend,
    BackendCapabilities,
    BackendOptions,
    EmbeddingBatch,
    EmbedInput,
    hookimpl,
)


class LetterOptions(BackendOptions):
    """Options of the `letter-frequency` backend."""

    alphabet: str = Field("abcdefghijklmnopqrstuvwxyz", min_length=2)


class LetterFrequencyBackend(Backend):
    """Counts of each letter of the alphabet, L2-normalised."""

    kind = "letter-frequency"
    description = "Letter frequencies (an example third-party plugin)."
    Options = LetterOptions
    options: LetterOptions

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.capabilities_with(dimensions=len(self.options.alphabet), semantic=False)

    def space_identity(self) -> dict:
        return {"kind": self.kind, "model": "letter-frequency", "alphabet": self.options.alphabet}

    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        alphabet = self.options.alphabet
        dense = np.zeros((len(inputs), len(alphabet)), dtype=np.float32)
        for row, item in enumerate(inputs):
            for char in item.text.lower():
                column = alphabet.find(char)
                if column >= 0:
                    dense[row, column] += 1
        norms = np.linalg.norm(dense, axis=1, keepdims=True)
        return EmbeddingBatch(dense=dense / np.where(norms == 0, 1, norms))


@hookimpl
def register_backends(register) -> None:
    """Register the example backend."""
    register(LetterFrequencyBackend)
