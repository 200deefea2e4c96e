"""`hash`: deterministic feature hashing of word and character n-grams.

No model and no torch: a dependable last resort, and a test backend. Texts that share
words score higher than unrelated texts, but the space is lexical, not semantic, and
every answer says so (`semantic: false`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from serve_app import (
    Backend,
    BackendCapabilities,
    BackendOptions,
    EmbeddingBatch,
    EmbedInput,
    ModelAbout,
    hookimpl,
)

_TOKEN = re.compile(r"\w+", re.UNICODE)
# Bump when the hashing scheme changes: it is part of the space identity.
_ALGORITHM = "blake2b-signed-v1"
# The signed hashing trick this backend implements.
_CITATION = """@inproceedings{weinberger2009feature,
  title     = {Feature Hashing for Large Scale Multitask Learning},
  author    = {Weinberger, Kilian and Dasgupta, Anirban and Langford, John and
               Smola, Alex and Attenberg, Josh},
  booktitle = {Proceedings of the 26th International Conference on Machine Learning},
  pages     = {1113--1120},
  year      = {2009}
}"""


class HashOptions(BackendOptions):
    """Options of the `hash` backend."""

    dimensions: int = Field(256, ge=8, le=65536, description="Length of each vector.")
    word_ngrams: int = Field(2, ge=1, le=4, description="Word n-grams of length 1..N.")
    char_ngrams: tuple[int, int] = Field(
        (3, 5), description="Character n-gram lengths (min, max) within each word."
    )
    char_weight: float = Field(0.5, ge=0, description="Weight of character n-grams vs words.")
    lowercase: bool = True
    seed: int = Field(0, ge=0, description="Changes every bucket: another seed, another space.")

    @model_validator(mode="after")
    def _char_range(self) -> HashOptions:
        low, high = self.char_ngrams
        if not 1 <= low <= high <= 10:
            raise ValueError("char_ngrams must be (min, max) with 1 <= min <= max <= 10")
        return self


class HashBackend(Backend):
    """Feature hashing into a fixed dimension, L2-normalised."""

    kind = "hash"
    description = "Feature hashing of word and character n-grams (lexical, non-semantic)."
    Options = HashOptions
    options: HashOptions

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(
            dimensions=self.options.dimensions, normalized=True, semantic=False
        )

    def space_identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": "hash",
            "algorithm": _ALGORITHM,
            **self.options.model_dump(mode="json"),
        }

    def about(self) -> ModelAbout:
        """No weights: the code is embedserve's own, under embedserve's licence."""
        return ModelAbout(model=f"hash ({_ALGORITHM})", license="Apache-2.0", citation=_CITATION)

    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        dense = np.zeros((len(inputs), self.options.dimensions), dtype=np.float32)
        for row, item in enumerate(inputs):
            self._accumulate(dense[row], item.text)
        norms = np.linalg.norm(dense, axis=1, keepdims=True)
        return EmbeddingBatch(dense=dense / np.where(norms == 0, 1, norms))

    def _accumulate(self, vector: np.ndarray, text: str) -> None:
        counts = Counter(self._features(text))
        salt = self.options.seed.to_bytes(8, "little")
        for feature, count in counts.items():
            digest = hashlib.blake2b(feature.encode(), digest_size=8, salt=salt).digest()
            value = int.from_bytes(digest, "little")
            # The sign bit keeps colliding features from only ever adding up.
            sign = 1.0 if value & 1 else -1.0
            weight = self.options.char_weight if feature.startswith("c:") else 1.0
            vector[(value >> 1) % self.options.dimensions] += sign * weight * (1 + math.log(count))

    def _features(self, text: str) -> Iterator[str]:
        words = _TOKEN.findall(text.lower() if self.options.lowercase else text)
        for n in range(1, self.options.word_ngrams + 1):
            for i in range(len(words) - n + 1):
                yield "w:" + " ".join(words[i : i + n])
        low, high = self.options.char_ngrams
        for word in words:
            padded = f"<{word}>"
            for n in range(low, high + 1):
                for i in range(len(padded) - n + 1):
                    yield "c:" + padded[i : i + n]


@hookimpl
def register_backends(register) -> None:
    """Register the `hash` backend."""
    register(HashBackend)
