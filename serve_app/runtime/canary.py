"""Canary checks: catch a backend whose vectors silently went wrong.

Every replica embeds fixed probe texts at start and at every health check and compares
them with its space's reference: a non-finite value, another dimension, or a cosine
below `min_cosine` fails the canary, and the replica refuses to serve until it passes
again. A library upgrade that turns vectors into NaN or shifts them is then a refused
replica and a fallback, not a corrupted index.

Where the reference comes from, in order (`CanaryReferences`):
1. pinned references that ship with the config (`server.canary.references`: a folder in
   the image, in a package, or on shared storage), written by `embedserve canary record`;
2. the cluster's reference: the first replica of a space to record one wins cluster-wide,
   and every later replica on any node is checked against it;
3. the node's state dir, a cache that seeds the cluster after a restart.
Without any of these, a strict config refuses to serve the space (and says how to record
a reference); otherwise the replica records what it computes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from embedserve.runtime.locations import is_uri, local_path

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
        default=0.999, gt=0, le=1, description="Lowest cosine to the reference a probe may have."
    )
    probes: list[str] = Field(default_factory=lambda: list(DEFAULT_PROBES), min_length=1)


@dataclass(frozen=True)
class CanaryReference:
    """The recorded vectors of the probes of one space."""

    space_id: str
    probes: list[str]
    vectors: list[list[float]]
    recorded_at: float

    @classmethod
    def of(cls, space_id: str, probes: list[str], vectors: np.ndarray) -> CanaryReference:
        """A reference recorded now from probe vectors."""
        return cls(space_id, list(probes), vectors.tolist(), time.time())


class ReferenceStore:
    """Canary references as one JSON file per space id in a folder: a local path,
    `pkg:PACKAGE/FOLDER`, or a URI that fsspec opens (`s3://bucket/refs`)."""

    def __init__(self, location: str) -> None:
        self.location = location

    @classmethod
    def in_state_dir(cls, state_dir: str) -> ReferenceStore:
        """The node's cache of references, in its state dir."""
        return cls(str(Path(state_dir).expanduser() / "canaries"))

    def path(self, space_id: str) -> str:
        """Where a space's reference is (space ids may contain `/`)."""
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", space_id) + ".json"
        if is_uri(self.location):
            return f"{self.location.rstrip('/')}/{name}"
        return str(local_path(self.location) / name)

    def load(self, space_id: str) -> CanaryReference | None:
        """The stored reference of a space, if any."""
        path = self.path(space_id)
        if is_uri(path):
            from fsspec.core import url_to_fs

            fs, remote = url_to_fs(path)
            try:
                text = fs.cat_file(remote).decode()
            except FileNotFoundError:
                return None
        elif Path(path).is_file():
            text = Path(path).read_text()
        else:
            return None
        return CanaryReference(**json.loads(text))

    def save(self, reference: CanaryReference) -> str:
        """Store (or replace) a reference, whole or not at all; returns where it is."""
        path = self.path(reference.space_id)
        text = json.dumps(asdict(reference))
        if is_uri(path):
            from fsspec.core import url_to_fs

            fs, remote = url_to_fs(path)
            fs.pipe_file(remote, text.encode())  # object stores replace whole objects
            return path
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".tmp")
        partial.write_text(text)
        partial.replace(target)
        return path


def canary_problem(
    vectors: np.ndarray, reference: CanaryReference, min_cosine: float, origin: str
) -> str | None:
    """Why probe vectors do not match their reference, or None when they do; the reason
    names the probe, its cosine and where the reference came from."""
    if not np.isfinite(vectors).all():
        return NON_FINITE
    expected = np.asarray(reference.vectors, dtype=np.float64)
    if vectors.shape != expected.shape:
        return f"the probes gave shape {vectors.shape}, the {origin} has {expected.shape}"
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1)
    cosines = (vectors * expected).sum(axis=1) / np.where(norms == 0, 1, norms)
    worst = int(np.argmin(cosines))
    if cosines[worst] < min_cosine:
        recorded = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(reference.recorded_at))
        return (
            f"probe {worst} ({reference.probes[worst]!r}) has cosine {cosines[worst]:.6f} to "
            f"the {origin}, recorded at {recorded} UTC (minimum {min_cosine})"
        )
    return None


NON_FINITE = "the probes gave non-finite values (NaN or inf)"


@dataclass(frozen=True)
class CanaryResult:
    """`recorded` (this replica's vectors became the reference), `passed` or `failed`
    with a reason; `origin` says which reference judged them, `checked_at` (`time.time()`)
    when a replica recorded the result."""

    outcome: str
    problem: str | None = None
    origin: str | None = None
    checked_at: float | None = None


class ClusterReferences(Protocol):
    """One reference per space for the whole cluster: the first proposal wins."""

    def get(self, space_id: str, probes: list[str]) -> CanaryReference | None:
        """The cluster's reference of a space for these probes, if one was recorded."""
        ...

    def propose(self, reference: CanaryReference) -> CanaryReference:
        """Record `reference` unless its space has one for its probes; returns the one
        that holds."""
        ...


class ServerCanaryConfig(BaseModel):
    """Where canary references come from (`server.canary`)."""

    model_config = ConfigDict(extra="forbid")

    references: str | None = Field(
        default=None,
        description="A folder of pinned references (local path, `pkg:PACKAGE/FOLDER`, or "
        "a URI fsspec opens), written by `embedserve canary record --to`.",
    )
    strict: bool | None = Field(
        default=None,
        description="A space without a reference refuses to serve instead of recording "
        "one. Default: on when `references` is set.",
    )

    @property
    def is_strict(self) -> bool:
        """Strict unless said otherwise, where the config pins references."""
        return self.strict if self.strict is not None else self.references is not None


@dataclass
class CanaryReferences:
    """The references one replica checks against: pinned, then the cluster's, then the
    node's cache (see the module docstring)."""

    cache: ReferenceStore
    pinned: ReferenceStore | None = None
    cluster: ClusterReferences | None = None
    strict: bool = False

    @classmethod
    def of(
        cls, state_dir: str, settings: ServerCanaryConfig, cluster: ClusterReferences | None
    ) -> CanaryReferences:
        """The references a server config names, with the cluster's where there is one."""
        pinned = ReferenceStore(settings.references) if settings.references else None
        return cls(ReferenceStore.in_state_dir(state_dir), pinned, cluster, settings.is_strict)

    def evaluate(self, space_id: str, config: CanaryConfig, vectors: np.ndarray) -> CanaryResult:
        """Judge probe vectors against the space's reference, recording one where
        allowed. Non-finite vectors are never recorded."""
        if not np.isfinite(vectors).all():
            return CanaryResult("failed", NON_FINITE)
        reference, origin = self.find(space_id, config.probes)
        if reference is None:
            if self.strict:
                return CanaryResult("failed", self.missing(space_id))
            mine = CanaryReference.of(space_id, config.probes, vectors)
            reference = self.cluster.propose(mine) if self.cluster is not None else mine
            if reference == mine:
                self.cache.save(mine)
                return CanaryResult("recorded", origin="recorded by this replica")
            origin = "cluster's reference"
        problem = canary_problem(vectors, reference, config.min_cosine, origin)
        return CanaryResult("failed" if problem else "passed", problem, origin)

    def find(self, space_id: str, probes: list[str]) -> tuple[CanaryReference | None, str]:
        """The space's reference for these probes, and where it came from."""
        if self.pinned is not None:
            pinned = _matching(self.pinned.load(space_id), probes)
            if pinned is not None:
                return pinned, f"pinned reference {self.pinned.path(space_id)}"
        held = self.cluster.get(space_id, probes) if self.cluster is not None else None
        if held is not None:
            return held, "cluster's reference"
        cached = _matching(self.cache.load(space_id), probes)
        if cached is None:
            return None, ""
        if self.cluster is None:
            return cached, f"reference cached in {self.cache.path(space_id)}"
        # A cluster that restarted learns its reference again from a node's cache.
        return self.cluster.propose(cached), "cluster's reference"

    def missing(self, space_id: str) -> str:
        """Why a strict config refuses a space without a reference, and what to do."""
        where = self.pinned.location if self.pinned is not None else "the state dir"
        return (
            f"no canary reference for space {space_id} in {where}, and this config is "
            "strict: record one from known-good vectors with `embedserve canary record "
            "--config CONFIG` (it writes to server.canary.references; `--to FOLDER` "
            "writes elsewhere, for a config that then names that folder)"
        )


def _matching(reference: CanaryReference | None, probes: list[str]) -> CanaryReference | None:
    """The reference when it was recorded for these probes (other probes: none)."""
    return reference if reference is not None and reference.probes == list(probes) else None
