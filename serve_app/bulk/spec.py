"""What a bulk job does: the spec the CLI submits and the job entrypoint runs.

The spec travels as JSON on the entrypoint's command line, so every path in it is
absolute (the job runs in a working directory of Ray's choosing).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from embedserve.backend import InputType

InputFormat = Literal["jsonl", "csv", "parquet", "images"]
_SUFFIX_FORMATS: dict[str, InputFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# Where a job's progress and summary lines go (the job's stdout, or a test's list).
Log = Callable[[str], object]
# An input under DEFAULT_BATCH_SIZE * PROGRESS_STEPS rows gets smaller batches, so that
# its progress moves in steps (a job reports per batch); never below a backend batch of
# the bundled models.
DEFAULT_BATCH_SIZE = 512
PROGRESS_STEPS = 20
MIN_AUTO_BATCH_SIZE = 32
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


class BulkError(ValueError):
    """A bulk job cannot be submitted or started; the message says why."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Frozen):
    """The corpus: files of one format and which columns hold the id and the text."""

    path: str = Field(description="A file, a folder or a glob, absolute.")
    format: InputFormat
    id_column: str = "id"
    text_column: str = "text"


class QdrantSpec(_Frozen):
    """Where the Qdrant sink writes: a server URL or a local-mode folder, and a collection."""

    location: str
    collection: str


class JobSpec(_Frozen):
    """One bulk job: encode an input with one backend of a model into an output folder."""

    input: InputSpec
    output: str = Field(description="The output folder, absolute.")
    model: str
    backend: str | None = Field(
        default=None, description="Default: the first of the model's chain."
    )
    config: str | None = Field(default=None, description="Config file, absolute; None: bundled.")
    batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Rows per batch, and per output shard; None: `auto_batch_size`.",
    )
    workers: int = Field(default=1, ge=1, description="Encoder actors.")
    encoder_cpus: float | None = Field(
        default=None,
        ge=0,
        description="CPUs each encoder reserves; None: the backend's, or what is free "
        "(see bulk.resources).",
    )
    resource_wait_s: float = Field(
        default=60.0, ge=0, description="How long the job waits for its encoders' resources."
    )
    input_type: InputType | None = Field(default=None, description="Select the model's prompt.")
    sparse: bool = Field(
        default=False,
        description="Also write each row's sparse (lexical) vector; needs a backend "
        "with sparse output.",
    )
    faiss: str | None = Field(default=None, description="FAISS index factory string, e.g. `Flat`.")
    qdrant: QdrantSpec | None = None
    only_ids_from: str | None = Field(
        default=None, description="Re-encoding: embed only the ids present in this earlier output."
    )


def auto_batch_size(rows: int) -> int:
    """Rows per batch when none is asked for: 512, or fewer for a small input, so that
    it takes about `PROGRESS_STEPS` batches (and as many progress lines)."""
    return min(DEFAULT_BATCH_SIZE, max(MIN_AUTO_BATCH_SIZE, -(-rows // PROGRESS_STEPS)))


def detect_format(path: str) -> InputFormat:
    """The input format from a file's suffix, or from the files of a folder or glob.

    Raises:
        BulkError: no known format, or a folder mixing formats.
    """
    suffixes = {p.suffix.lower() for p in input_files(path)}
    if suffixes and suffixes <= IMAGE_SUFFIXES:
        return "images"
    formats: set[InputFormat] = {_SUFFIX_FORMATS[s] for s in suffixes if s in _SUFFIX_FORMATS}
    if len(formats) != 1:
        found = ", ".join(sorted(suffixes)) or "no files"
        raise BulkError(f"cannot tell the input format of {path} ({found}); pass --format")
    return formats.pop()


def input_files(path: str) -> list[Path]:
    """The files of an input: the file itself, a folder's files (recursively), or a glob's.

    Hidden files and folders (a leading dot) under the input's root are skipped.
    """
    given = Path(path)
    if given.is_file():
        return [given]
    root = input_root(path)
    pattern = "**/*" if given.is_dir() else str(given.relative_to(root))
    return sorted(
        p
        for p in root.glob(pattern)
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def input_root(path: str) -> Path:
    """The folder an input's ids are relative to: a folder itself, a file's folder, or a
    glob's leading part without wildcards (`/photos/**/*.jpg` -> `/photos`)."""
    given = Path(path)
    if given.is_dir():
        return given
    if given.is_file():
        return given.parent
    fixed = list(itertools.takewhile(_is_literal, given.parts))
    return Path(*fixed) if fixed else Path(given.anchor)


def _is_literal(part: str) -> bool:
    return not any(char in part for char in "*?[")
