"""`manifest.json`: what an output folder holds, and the rules for resuming into it.

An output folder holds vectors of exactly one space from exactly one input. A re-run of
the same job resumes into it; a job of another space or input is refused, so a folder
never mixes vectors that are not comparable.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from embedserve import __version__
from embedserve.bulk.spec import InputSpec

MANIFEST_FILE = "manifest.json"


class SpaceInfo(BaseModel):
    """The vector space of a job's backend: stored per row and in the manifest."""

    model: str
    backend: str
    backend_kind: str
    space_id: str
    identity: dict[str, Any]
    dimensions: int
    normalized: bool
    semantic: bool


class RunRecord(BaseModel):
    """One run of the job (a resume adds a run)."""

    started: float
    finished: float | None = None
    rows_processed: int = Field(
        default=0,
        description="Rows this run added to the output (vectors and errors), from the files.",
    )
    texts_embedded: int = Field(
        default=0, description="Backend calls' inputs, after deduplication."
    )
    rows_per_s: float | None = Field(default=None, description="Rows processed over the whole run.")
    steady_texts_per_s: float | None = Field(
        default=None,
        description="Texts embedded per second between the first and the last batch's "
        "end: the pipeline's throughput without start-up and warm-up.",
    )
    first_batch_s: float | None = Field(
        default=None, description="Start-up: seconds from the run's start to its first batch done."
    )


class Counts(BaseModel):
    """Rows in the output, counted from the files themselves at the end of a run."""

    input_rows: int = 0
    embedded: int = 0
    errors: int = 0
    repeated_ids: int = Field(
        default=0, description="Errors for rows that repeat an earlier row's id (which is kept)."
    )
    distinct_ids: int = 0
    texts_embedded: int = Field(
        default=0, description="Backend calls' inputs, after deduplication."
    )


class Manifest(BaseModel):
    """The contents of `manifest.json`."""

    embedserve_version: str = __version__
    status: Literal["running", "complete"] = "running"
    input: InputSpec
    config_path: str | None
    config_sha256: str
    space: SpaceInfo
    sparse: bool = Field(default=False, description="The shards have a `sparse` column.")
    counts: Counts = Field(default_factory=Counts)
    runs: list[RunRecord] = Field(default_factory=list)
    sinks: dict[str, Any] = Field(default_factory=dict)
    reencoded_from: str | None = None

    def resume_problem(self, other: Manifest) -> str | None:
        """Why a job described by `other` cannot resume into this output, or None."""
        if other.space.space_id != self.space.space_id:
            return (
                f"it holds vectors of space {self.space.space_id} ({self.space.model} via "
                f"{self.space.backend}); this job would write space {other.space.space_id}"
            )
        if other.input != self.input:
            return f"it was written from input {self.input.model_dump()}"
        if other.sparse != self.sparse:
            return f"it was written {'with' if self.sparse else 'without'} sparse vectors"
        return None


def read_manifest(output: str | Path) -> Manifest | None:
    """The manifest of an output folder, or None when it has none yet."""
    path = Path(output) / MANIFEST_FILE
    if not path.is_file():
        return None
    return Manifest.model_validate_json(path.read_text())


def write_manifest(output: str | Path, manifest: Manifest) -> None:
    """Write the manifest atomically: a reader never sees half a file."""
    path = Path(output) / MANIFEST_FILE
    temporary = path.with_name(f".{MANIFEST_FILE}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    os.replace(temporary, path)


def new_run() -> RunRecord:
    """A run record that starts now."""
    return RunRecord(started=time.time())
