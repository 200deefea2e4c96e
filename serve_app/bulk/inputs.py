"""Reading a corpus: JSONL, CSV or Parquet rows with an id and a text column, or the
files of an image folder or glob (ids: their paths relative to the input's root).

Ids are stored as strings whatever their input type (a CSV id `007` stays `007`).
Rows stream through Ray Data; only counting rows for progress reads the files in the
driver, and it reads one column or the file metadata, never the corpus into memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedserve.bulk.spec import BulkError, InputSpec, input_files, input_root

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

# Reading is light next to embedding: read tasks must not hold a core the encoder
# actors reserve (a model reserving every CPU would otherwise starve its own input).
_READ_ARGS: dict[str, Any] = {"num_cpus": 0, "concurrency": 2}


class InputError(BulkError):
    """The input cannot be read as asked (no files, a missing column)."""


def files_of(spec: InputSpec) -> list[str]:
    """The input's files, as strings.

    Raises:
        InputError: the path matches no file.
    """
    files = [str(p) for p in input_files(spec.path)]
    if not files:
        raise InputError(f"no input files at {spec.path}")
    return files


def input_columns(spec: InputSpec) -> list[str]:
    """The column names of the input's first file (first row for JSONL)."""
    first = files_of(spec)[0]
    if spec.format == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(first).names)
    if spec.format == "csv":
        import pyarrow.csv as pv

        with pv.open_csv(first) as reader:
            return list(reader.schema.names)
    with open(first, encoding="utf-8") as stream:
        line = next((line for line in stream if line.strip()), "{}")
    return list(json.loads(line))


def check_columns(spec: InputSpec) -> None:
    """Fail before any work when the id or text column is missing.

    Raises:
        InputError: a column is missing; the message lists the columns found.
    """
    if spec.format == "images":
        return  # image files have no columns: the id is the path, the item the file
    columns = input_columns(spec)
    for role, name in (("id", spec.id_column), ("text", spec.text_column)):
        if name not in columns:
            raise InputError(
                f"the input has no {role} column {name!r} (columns: {', '.join(columns)}); "
                f"pass --{role}-column"
            )


def count_rows(spec: InputSpec) -> int:
    """How many rows the input has (for progress and the manifest)."""
    files = files_of(spec)
    if spec.format == "images":
        return len(files)
    if spec.format == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if spec.format == "csv":
        import pyarrow.csv as pv

        options = pv.ConvertOptions(include_columns=[spec.id_column])
        total = 0
        for f in files:
            with pv.open_csv(f, convert_options=options) as reader:
                total += sum(batch.num_rows for batch in reader)
        return total
    return sum(_count_json_lines(Path(f)) for f in files)


def _count_json_lines(path: Path) -> int:
    with path.open("rb") as stream:
        return sum(1 for line in stream if line.strip())


def read_input(spec: InputSpec, blocks: int | None = None) -> ray.data.Dataset:
    """A Ray Data dataset of the input's rows (only the id and text columns of Parquet
    and CSV; JSONL rows keep their other fields until the encoder; image rows are a
    file's `bytes` and `path`).

    Args:
        spec: the input.
        blocks: how many blocks to split the rows into (None: Ray Data's choice).
    """
    import pyarrow as pa
    import pyarrow.csv as pv
    import ray.data

    files = files_of(spec)
    columns = [spec.id_column, spec.text_column]
    args = {**_READ_ARGS, "override_num_blocks": blocks}
    if spec.format == "images":
        # Files stream in blocks like any rows; they are decoded only in the encoder.
        return ray.data.read_binary_files(files, include_paths=True, **args)
    if spec.format == "parquet":
        return ray.data.read_parquet(files, columns=columns, **args)
    if spec.format == "csv":
        # Strings as written: type inference would turn an id `007` into 7.
        options = pv.ConvertOptions(
            column_types={name: pa.string() for name in columns}, include_columns=columns
        )
        return ray.data.read_csv(files, convert_options=options, **args)
    if spec.format == "jsonl":
        # No select_columns: it would be a task of its own needing a CPU; the encoder
        # reads only the id and text columns anyway.
        return ray.data.read_json(files, lines=True, file_extensions=None, **args)
    raise InputError(f"reading {spec.format} input is not supported")


def batch_rows(batch: pa.Table, spec: InputSpec) -> tuple[list[str | None], list[str | None]]:
    """The ids and texts of a batch as Python strings (None where missing)."""
    return _strings(batch.column(spec.id_column)), _strings(batch.column(spec.text_column))


def image_rows(batch: pa.Table, spec: InputSpec) -> tuple[list[str], list[bytes]]:
    """The ids (paths relative to the input's root, with `/`) and file bytes of a batch
    of image files."""
    root = input_root(spec.path)
    paths = batch.column("path").to_pylist()
    return [Path(p).relative_to(root).as_posix() for p in paths], batch.column("bytes").to_pylist()


def _strings(column: pa.ChunkedArray) -> list[str | None]:
    import pyarrow as pa

    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        column = column.cast(pa.string())
    return column.to_pylist()
