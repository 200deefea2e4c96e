"""Reading a corpus: JSONL, CSV or Parquet rows with an id and a text column, or the
files of an image folder or glob (ids: their paths relative to the input's root).

Ids are stored as strings whatever their input type (a CSV id `007` stays `007`).
Rows stream through Ray Data. The driver reads only the id column, once, to count the
rows and find the ids the input repeats (and, for those, their first rows again); it
never holds the corpus in memory.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedserve.bulk.shards import arrow_compute
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


@dataclass(frozen=True)
class RowPlace:
    """Where a row is: its file (relative to the input's root) and its 1-based row there."""

    file: str
    row: int

    def __str__(self) -> str:
        return f"row {self.row} of {self.file}"


@dataclass(frozen=True)
class RepeatedId:
    """A row whose id an earlier row of the input has (the earlier row is the one kept)."""

    id: str
    place: RowPlace
    first: RowPlace


@dataclass
class InputScan:
    """What the driver learns from the input's ids before any work: how many rows it
    has, the rows that repeat an earlier row's id, and the first rows of those ids."""

    rows: int
    repeated: list[RepeatedId] = field(default_factory=list)
    first_places: dict[str, RowPlace] = field(default_factory=dict)


def scan_input(spec: InputSpec) -> InputScan:
    """Count the input's rows and find the ids it repeats, reading only the id column
    (one file at a time; the ids of the whole input are held as one Arrow column).

    Raises:
        InputError: no files, or ids a file cannot give (types that change in a JSONL).
    """
    import pyarrow as pa

    pc = arrow_compute()

    files = files_of(spec)
    if spec.format == "images":
        return InputScan(rows=len(files))  # ids are distinct paths: none repeats
    columns = [_id_column(spec, f) for f in files]
    ids = pa.chunked_array([chunk for column in columns for chunk in column.chunks], pa.string())
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    scan = InputScan(rows=len(ids))
    if len(repeated) == 0:
        return scan
    places = _file_places(spec, files, [len(column) for column in columns])
    rows = pc.indices_nonzero(pc.is_in(ids, value_set=repeated)).to_pylist()
    for row, row_id in zip(rows, pc.take(ids, rows).to_pylist(), strict=True):
        if not row_id:
            continue  # no id: the encoders report it as such
        place = places(row)
        first = scan.first_places.setdefault(row_id, place)
        if first != place:
            scan.repeated.append(RepeatedId(row_id, place, first))
    return scan


def _file_places(
    spec: InputSpec, files: list[str], rows_per_file: list[int]
) -> Callable[[int], RowPlace]:
    """The place of a row given its index in the whole input."""
    root = input_root(spec.path)
    names = [Path(f).relative_to(root).as_posix() for f in files]
    starts = list(itertools.accumulate(rows_per_file, initial=0))

    def place(index: int) -> RowPlace:
        number = bisect.bisect_right(starts, index) - 1
        return RowPlace(names[number], index - starts[number] + 1)

    return place


def _id_column(spec: InputSpec, path: str) -> pa.ChunkedArray:
    """One file's ids as strings, as the encoders read them (None where missing)."""
    import pyarrow as pa

    return pa.chunked_array(
        [batch.column(0) for batch in _string_batches(spec, path, [spec.id_column])], pa.string()
    )


def first_rows(spec: InputSpec, scan: InputScan, ids: Iterable[str]) -> pa.Table:
    """The first rows of repeated ids, read again from the input (id and text columns,
    as strings): the rows the job embeds for those ids."""
    import pyarrow as pa

    by_file: dict[str, dict[int, str]] = {}
    for row_id in ids:
        place = scan.first_places[row_id]
        by_file.setdefault(place.file, {})[place.row - 1] = row_id
    root = input_root(spec.path)
    tables = []
    for path in files_of(spec):
        wanted = by_file.get(Path(path).relative_to(root).as_posix())
        if not wanted:
            continue
        offset = 0
        for batch in _string_batches(spec, path, [spec.id_column, spec.text_column]):
            here = [row - offset for row in sorted(wanted) if offset <= row < offset + len(batch)]
            tables.append(pa.Table.from_batches([batch]).take(here))
            offset += len(batch)
    schema = pa.schema([(spec.id_column, pa.string()), (spec.text_column, pa.string())])
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _string_batches(spec: InputSpec, path: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """A file's columns, streamed in batches, as strings (null where a row lacks one).

    Raises:
        InputError: the file cannot give them (a JSONL field whose type changes).
    """
    import pyarrow as pa

    try:
        for batch in _column_batches(spec, path, columns):
            arrays = [
                batch.column(name).cast(pa.string())
                if name in batch.schema.names
                else pa.nulls(len(batch), pa.string())
                for name in columns
            ]
            yield pa.RecordBatch.from_arrays(arrays, names=columns)
    except pa.ArrowInvalid as exc:
        raise InputError(f"cannot read {', '.join(columns)} of {path}: {exc}") from None


def _column_batches(spec: InputSpec, path: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """A file's columns, streamed in batches, as the file types them."""
    import pyarrow as pa

    if spec.format == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).iter_batches(columns=columns)
    if spec.format == "csv":
        import pyarrow.csv as pv

        types = {name: pa.string() for name in columns}
        options = pv.ConvertOptions(
            include_columns=columns, column_types=types, include_missing_columns=True
        )
        return pv.open_csv(path, convert_options=options)
    return _jsonl_batches(path, columns)


def _jsonl_batches(path: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Fields of a JSONL file, streamed. Their types are inferred from the first block,
    as Ray Data infers them; other fields are skipped, so rows may differ in them."""
    import pyarrow as pa
    import pyarrow.json as pj

    first_block = pj.open_json(path)
    fields = [
        first_block.schema.field(name) for name in columns if name in first_block.schema.names
    ]
    first_block.close()
    options = pj.ParseOptions(explicit_schema=pa.schema(fields), unexpected_field_behavior="ignore")
    return iter(pj.open_json(path, parse_options=options))


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
