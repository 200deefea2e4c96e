"""Post-processing of dense vectors: Matryoshka truncation and wire encodings."""

from __future__ import annotations

import base64

import numpy as np


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def truncate(vectors: np.ndarray, dimensions: int, renormalize: bool) -> np.ndarray:
    """The first `dimensions` components of each row (Matryoshka), renormalised if the
    backend's vectors are normalised, so cosine and dot product stay equal."""
    cut = vectors[:, :dimensions]
    return l2_normalize(cut) if renormalize else cut


def encode_base64(vector: np.ndarray) -> str:
    """Little-endian float32 bytes in base64, as the OpenAI API returns them."""
    return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
