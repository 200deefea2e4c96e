"""Re-encoding migration: the same ids embedded again with another model.

The new vectors go to a new output folder beside the old one, never over it, so both
spaces stay available while an index is migrated. A report compares the two outputs'
ids: a migration that loses a row says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embedserve.bulk.manifest import Manifest, read_manifest
from embedserve.bulk.shards import DATA_DIR, ERRORS_DIR, arrow_compute, committed_shards, shard_ids
from embedserve.bulk.spec import BulkError, InputSpec, Log

REPORT_FILE = "reencode_report.json"
_SAMPLE_IDS = 20


class ReencodeError(BulkError):
    """A re-encoding that cannot start (no finished old output, same space, same folder)."""


def reencode_input(old_output: Path, source: str) -> InputSpec:
    """The old output's input spec, read from `source` (the original corpus, maybe moved).

    Raises:
        ReencodeError: the old output has no complete manifest.
    """
    manifest = read_manifest(old_output)
    if manifest is None or manifest.status != "complete":
        raise ReencodeError(f"{old_output} is not a finished embedserve output")
    return manifest.input.model_copy(update={"path": source})


def default_output(old_output: Path, new_space_id: str) -> Path:
    """Beside the old output, named after the new space."""
    return old_output.with_name(f"{old_output.name}.{new_space_id.replace('/', '-')}")


def check_new_space(old_output: Path, new_output: Path, new_space_id: str) -> None:
    """Refuse a re-encoding into the old folder or into the space it already has.

    Raises:
        ReencodeError: the new output is the old one, or the space would not change.
    """
    manifest = read_manifest(old_output)
    assert manifest is not None  # reencode_input checked it
    if manifest.space.space_id == new_space_id:
        raise ReencodeError(f"{old_output} is already in space {new_space_id}")
    if new_output.resolve() == old_output.resolve():
        raise ReencodeError("the new output must not be the old one: both spaces are kept")


def _manifest(output: Path) -> Manifest:
    manifest = read_manifest(output)
    if manifest is None:
        raise ReencodeError(f"{output} has no manifest: it is not a finished bulk output")
    return manifest


def compare_outputs(old_output: Path, new_output: Path) -> dict[str, Any]:
    """Ids of the old output's vectors that the new output has as vectors, as errors, or
    not at all."""
    pc = arrow_compute()

    old_ids = shard_ids(committed_shards(old_output, DATA_DIR))
    new_ids = shard_ids(committed_shards(new_output, DATA_DIR))
    error_ids = shard_ids(committed_shards(new_output, ERRORS_DIR))
    missing = pc.filter(
        old_ids, pc.invert(pc.or_(pc.is_in(old_ids, new_ids), pc.is_in(old_ids, error_ids)))
    )
    old_manifest, new_manifest = _manifest(old_output), _manifest(new_output)
    return {
        "old": {
            "output": str(old_output),
            "space_id": old_manifest.space.space_id,
            "model": old_manifest.space.model,
            "vectors": len(old_ids),
        },
        "new": {
            "output": str(new_output),
            "space_id": new_manifest.space.space_id,
            "model": new_manifest.space.model,
            "vectors": len(new_ids),
            "errors": len(error_ids),
        },
        "missing": len(missing),
        "missing_sample": missing.to_pylist()[:_SAMPLE_IDS],
        "complete": len(missing) == 0 and len(error_ids) == 0,
    }


def write_reencode_report(old_output: Path, new_output: Path, log: Log) -> dict[str, Any]:
    """Write `reencode_report.json` into the new output and log its verdict."""
    report = compare_outputs(old_output, new_output)
    (new_output / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    log(
        f"reencode: {report['old']['vectors']} ids in {report['old']['space_id']}, "
        f"{report['new']['vectors']} re-embedded in {report['new']['space_id']}, "
        f"{report['new']['errors']} errors, {report['missing']} missing"
    )
    return report
