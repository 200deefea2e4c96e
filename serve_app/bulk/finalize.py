"""The end of a run: the errors file, counts verified from the files, sinks, reports."""

from __future__ import annotations

import json
import os
from pathlib import Path

from embedserve.bulk.manifest import Counts, Manifest
from embedserve.bulk.shards import (
    DATA_DIR,
    ERRORS_DIR,
    ERRORS_FILE,
    REPEATED_IDS_SHARD,
    arrow_compute,
    committed_shards,
    iter_shard_tables,
    shard_ids,
)
from embedserve.bulk.spec import BulkError, JobSpec, Log


class DuplicateIdsError(BulkError):
    """The output holds two vectors under one id (the input changed between runs?)."""


def write_errors_file(output: Path) -> int:
    """Gather the error shards into `errors.jsonl` (id and reason per line); its rows."""
    path = output / ERRORS_FILE
    temporary = path.with_name(f".{ERRORS_FILE}.tmp")
    rows = 0
    with temporary.open("w", encoding="utf-8") as stream:
        for table in iter_shard_tables(committed_shards(output, ERRORS_DIR)):
            for row in table.to_pylist():
                stream.write(json.dumps(row, ensure_ascii=False) + "\n")
                rows += 1
    os.replace(temporary, path)
    return rows


def count_output(output: Path, input_rows: int, texts_embedded: int) -> Counts:
    """Rows of the output counted from its shards. An id has one vector or one error,
    and one more error per row that repeats it.

    Raises:
        DuplicateIdsError: an id has more than one vector.
    """
    import pyarrow as pa

    pc = arrow_compute()

    data_ids = shard_ids(committed_shards(output, DATA_DIR))
    error_shards = committed_shards(output, ERRORS_DIR)
    error_ids = shard_ids(error_shards)
    repeats = [shard for shard in error_shards if Path(shard).name == REPEATED_IDS_SHARD]
    vectors = pc.count_distinct(data_ids, mode="all").as_py()
    if vectors != len(data_ids):
        raise DuplicateIdsError(
            f"{output} has {len(data_ids) - vectors} ids with more than one vector, which "
            "one input never gives: did the input change between runs into this folder? "
            "Encode it into a new folder"
        )
    ids = pa.chunked_array(data_ids.chunks + error_ids.chunks, type=pa.string())
    return Counts(
        input_rows=input_rows,
        embedded=len(data_ids),
        errors=len(error_ids),
        repeated_ids=len(shard_ids(repeats)),
        distinct_ids=pc.count_distinct(ids, mode="all").as_py(),
        texts_embedded=texts_embedded,
    )


def finalize_output(
    spec: JobSpec, manifest: Manifest, input_rows: int, texts_embedded: int, log: Log
) -> Manifest:
    """Errors file, verified counts, sinks and the re-encoding report; the final manifest."""
    from embedserve.bulk.reencode import write_reencode_report
    from embedserve.bulk.sinks import write_sinks

    output = Path(spec.output)
    write_errors_file(output)
    counts = count_output(output, input_rows, manifest.counts.texts_embedded + texts_embedded)
    sinks = write_sinks(spec, manifest.space, log)
    if spec.only_ids_from is not None:
        write_reencode_report(Path(spec.only_ids_from), output, log)
    return manifest.model_copy(
        update={
            "status": "complete",
            "counts": counts,
            "sinks": sinks,
        }
    )
