"""Canary checks: catch a backend whose vectors silently went wrong.

The first time a backend's space is validated, it embeds fixed probe texts and the
vectors are stored as the reference of that space id. Later, at every replica start and
health check, the probes are embedded again: a non-finite value, another dimension, or a
cosine to the reference below `min_cosine` fails the canary, and the replica refuses to
serve until it passes again. A library upgrade that turns vectors into NaN or noise is
then a failed health check and a fallback, not a corrupted index.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_PROBES = (
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "def add(a, b): return a + b",
)
DEFAULT_STATE_DIR = "~/.local/state/embedserve"


class CanaryConfig(BaseModel):
    """Canary settings of one backend."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    min_cosine: float = Field(
        0.999, gt=0, le=1, description="Lowest cosine to the reference a probe may have."
    )
    probes: list[str] = Field(default_factory=lambda: list(DEFAULT_PROBES), min_length=1)


@dataclass(frozen=True)
class CanaryReference:
    """The recorded vectors of the probes of one space."""

    space_id: str
    probes: list[str]
    vectors: list[list[float]]
    recorded_at: float


class ReferenceStore:
    """Canary references as one JSON file per space id in a state folder."""

    def __init__(self, state_dir: str) -> None:
        self.folder = Path(state_dir).expanduser() / "canaries"

    def path(self, space_id: str) -> Path:
        """The file of a space's reference (space ids may contain `/`)."""
        return self.folder / (re.sub(r"[^A-Za-z0-9_.-]", "_", space_id) + ".json")

    def load(self, space_id: str) -> CanaryReference | None:
        """The stored reference of a space, if any."""
        path = self.path(space_id)
        if not path.is_file():
            return None
        return CanaryReference(**json.loads(path.read_text()))

    def save(self, space_id: str, probes: list[str], vectors: np.ndarray) -> CanaryReference:
        """Store (or replace) a space's reference; written atomically."""
        reference = CanaryReference(space_id, list(probes), vectors.tolist(), time.time())
        path = self.path(space_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(asdict(reference)))
        partial.replace(path)
        return reference


def canary_problem(
    vectors: np.ndarray, reference: CanaryReference, min_cosine: float
) -> str | None:
    """Why probe vectors do not match their reference, or None when they do."""
    if not np.isfinite(vectors).all():
        return "the probes gave non-finite values (NaN or inf)"
    expected = np.asarray(reference.vectors, dtype=np.float64)
    if vectors.shape != expected.shape:
        return f"the probes gave shape {vectors.shape}, the reference has {expected.shape}"
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1)
    cosines = (vectors * expected).sum(axis=1) / np.where(norms == 0, 1, norms)
    worst = int(np.argmin(cosines))
    if cosines[worst] < min_cosine:
        return (
            f"probe {worst} has cosine {cosines[worst]:.6f} to the reference recorded at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(reference.recorded_at))} UTC "
            f"(minimum {min_cosine})"
        )
    return None


@dataclass(frozen=True)
class CanaryResult:
    """`recorded` (first validation of the space), `passed` or `failed` with a reason."""

    outcome: str
    problem: str | None = None


def evaluate_canary(
    store: ReferenceStore, space_id: str, config: CanaryConfig, vectors: np.ndarray
) -> CanaryResult:
    """Compare probe vectors with the space's reference, recording it the first time.

    Non-finite vectors are never recorded as a reference.
    """
    reference = store.load(space_id)
    if reference is None or reference.probes != config.probes:
        if not np.isfinite(vectors).all():
            return CanaryResult("failed", "the probes gave non-finite values (NaN or inf)")
        store.save(space_id, config.probes, vectors)
        return CanaryResult("recorded")
    problem = canary_problem(vectors, reference, config.min_cosine)
    return CanaryResult("failed", problem) if problem else CanaryResult("passed")


class CanaryFailed(Exception):
    """A replica whose canary failed refuses to serve; the router falls back."""
