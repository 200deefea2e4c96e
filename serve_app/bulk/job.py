"""The job entrypoint: `python -m embedserve.bulk.job SPEC_JSON`, run by Ray's job API.

It checks everything that can fail before any work (config, backend, columns, the
output's space), then runs the pipeline, prints progress lines, and finalises the
output: the errors file, counts verified from the files, the sinks, the manifest.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from embedserve import BackendUnavailable, Modality, OutputKind, default_registry
from embedserve.bulk.finalize import finalize_output
from embedserve.bulk.inputs import InputScan, check_columns, first_rows, scan_input
from embedserve.bulk.job_console import send_ray_output_beside_the_job_log
from embedserve.bulk.manifest import (
    Manifest,
    RunRecord,
    SpaceInfo,
    new_run,
    read_manifest,
    write_manifest,
)
from embedserve.bulk.pipeline import DUPLICATE_ID, EncodePlan, encode_dataset, encode_rows
from embedserve.bulk.progress import ProgressLog, RunTally, follow
from embedserve.bulk.resources import schedule_encoders
from embedserve.bulk.shards import (
    DATA_DIR,
    ERRORS_DIR,
    REPEATED_IDS_SHARD,
    arrow_compute,
    committed_shards,
    errors_table,
    prepare_folders,
    shard_ids,
    write_shard,
)
from embedserve.bulk.spec import BulkError, JobSpec, Log, auto_batch_size
from embedserve.config import BackendConfig, EmbedServeConfig, load_config
from embedserve.runtime import placement
from embedserve.serving.images import ImageLimits

# Runs of the pipeline in a row that write nothing before a job gives up on encoder
# actors that keep dying.
PIPELINE_ATTEMPTS = 3


class JobStartError(BulkError):
    """The job cannot start; the message says why (nothing was written)."""


class EncodersDiedError(BulkError):
    """Encoder actors keep dying without writing anything (the shards written stay)."""


def choose_backend(config: EmbedServeConfig, spec: JobSpec) -> str:
    """The one backend the job encodes with: `spec.backend`, else the chain's first.

    Raises:
        JobStartError: unknown model, or a backend outside the model's chain.
    """
    if spec.model not in config.models:
        known = ", ".join(sorted(config.models))
        raise JobStartError(f"unknown model {spec.model!r} (configured models: {known})")
    chain = config.models[spec.model].chain
    if spec.backend is None:
        return chain[0]
    if spec.backend not in chain:
        raise JobStartError(
            f"backend {spec.backend!r} is not in model {spec.model!r}'s chain ({', '.join(chain)})"
        )
    return spec.backend


def config_sha256(config: EmbedServeConfig) -> str:
    """A hash of the validated config (independent of the file's formatting)."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _probe(backend_config: dict[str, Any]) -> dict[str, Any]:
    """Load the backend where the encoders will run; its loaded capabilities."""
    config = BackendConfig.model_validate(backend_config)
    backend = default_registry().get(config.kind).backend_class(config.options)
    backend.load()
    return backend.capabilities.model_dump(mode="json")


def probe_space(
    config: EmbedServeConfig, model: str, backend_name: str, actor_options: dict[str, Any]
) -> SpaceInfo:
    """Load the backend once, with the encoders' resources, and describe its space.

    Raises:
        JobStartError: the backend cannot load (unavailable here, or any load error).
    """
    import ray
    from ray.exceptions import RayTaskError

    backend_config = config.backends[backend_name]
    probe = ray.remote(max_retries=0, **actor_options)(_probe)
    try:
        capabilities = ray.get(probe.remote(backend_config.model_dump(mode="json")))
    except RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        kind = "is unavailable" if isinstance(cause, BackendUnavailable) else "cannot load"
        reason = str(getattr(exc, "cause", None) or exc).strip().splitlines()[-1]
        raise JobStartError(
            f"backend {backend_name} ({backend_config.kind}) {kind}: {reason}"
        ) from None
    return SpaceInfo(
        model=model,
        backend=backend_name,
        backend_kind=backend_config.kind,
        space_id=config.space_id(backend_name),
        identity=config.backend(backend_name).space_identity(),
        dimensions=capabilities["dimensions"],
        normalized=capabilities["normalized"],
        semantic=capabilities["semantic"],
    )


def start_manifest(spec: JobSpec, config: EmbedServeConfig, space: SpaceInfo) -> Manifest:
    """The manifest this run writes: a fresh one, or the output's own when resuming,
    with a record of this run (unfinished until the run ends).

    Raises:
        JobStartError: the output folder holds another space or another input.
    """
    wanted = Manifest(
        input=spec.input,
        config_path=spec.config,
        config_sha256=config_sha256(config),
        space=space,
        sparse=spec.sparse,
        reencoded_from=spec.only_ids_from,
    )
    existing = read_manifest(spec.output)
    if existing is None:
        if committed_shards(Path(spec.output)):
            raise JobStartError(f"{spec.output} holds shards but no manifest; use a new folder")
        return wanted.model_copy(update={"runs": [new_run()]})
    problem = existing.resume_problem(wanted)
    if problem:
        raise JobStartError(f"cannot resume into {spec.output}: {problem}; use another --output")
    return existing.model_copy(
        update={
            "status": "running",
            "config_sha256": wanted.config_sha256,
            "runs": [*existing.runs, new_run()],
        }
    )


class Preflight(NamedTuple):
    """What the checks before any work found out."""

    config: EmbedServeConfig
    backend_name: str
    options: dict[str, Any]  # the encoders' actor options
    space: SpaceInfo
    scan: InputScan


def run_job(spec: JobSpec, log: Log = print) -> Manifest:
    """Run one bulk job in a process connected to Ray (started locally if need be).

    Args:
        spec: what to encode, with which model, into which folder.
        log: where progress lines go (stdout: the job's logs).

    Returns:
        The final manifest, also written to the output folder.

    Raises:
        JobStartError: the job could not start; nothing was written.
        EncodersUnschedulable: the encoders' resources were not free in time.
    """
    config, backend_name, options, space, scan = _preflight(spec, log)
    only_shards = None if spec.only_ids_from is None else _only_shards(spec.only_ids_from)
    output = Path(spec.output)
    manifest = start_manifest(spec, config, space)
    output.mkdir(parents=True, exist_ok=True)
    prepare_folders(output)
    write_manifest(output, manifest)
    batch_size = spec.batch_size or auto_batch_size(scan.rows)
    log(
        f"encoding {scan.rows} rows of {spec.input.path} with {backend_name} into {output}, "
        f"batches of up to {batch_size} rows"
    )
    log(f"space {space.space_id} ({space.dimensions} dimensions)")
    plan = partial(
        EncodePlan,
        input=spec.input,
        backend_config=config.backends[backend_name].model_dump(mode="json"),
        space=space,
        output=str(output),
        image_limits=ImageLimits(config.server.max_image_bytes, config.server.max_image_pixels),
        only_shards=only_shards,
        input_type=spec.input_type,
        sparse=spec.sparse,
    )
    rows_before = _output_rows(output)
    tally = RunTally()
    _encode_repeated(spec, scan, plan(), options, tally, log)
    _encode_with_retries(spec, plan, options, batch_size, tally, ProgressLog(scan.rows, log))
    finished = time.time()
    manifest = finalize_output(spec, manifest, scan.rows, tally.texts_embedded, log)
    rows_added = manifest.counts.embedded + manifest.counts.errors - rows_before
    _record_run(manifest.runs[-1], tally, finished, rows_added)
    write_manifest(output, manifest)
    log(_summary(manifest))
    return manifest


def _preflight(spec: JobSpec, log: Log) -> Preflight:
    """Everything that can fail before work: config, backend, input, the encoders'
    resources, loading the backend."""
    import ray
    from ray.data import DataContext

    config = load_config(spec.config)
    backend_name = choose_backend(config, spec)
    if spec.input.format == "images":
        _check_embeds_images(config, backend_name)
    check_outputs(config, backend_name, spec)
    check_columns(spec.input)
    scan = scan_input(spec.input)
    if not ray.is_initialized():
        # The encoders' output (model loading bars, library warnings) stays in their
        # own logs; their errors reach this process as exceptions.
        ray.init(log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    backend_options = placement.actor_options(
        config.backends[backend_name], placement.replica_env_vars(config)
    )
    options = schedule_encoders(backend_options, spec, log)
    space = probe_space(config, spec.model, backend_name, options)
    return Preflight(config, backend_name, options, space, scan)


def _encode_repeated(
    spec: JobSpec,
    scan: InputScan,
    plan: EncodePlan,
    options: dict[str, Any],
    tally: RunTally,
    log: Log,
) -> None:
    """Report the rows that repeat an earlier row's id, and embed each such id's first
    row (once: a resumed run skips what the output has).

    The reports go to the errors before the pipeline runs, so every row of a repeated
    id is done for the pipeline, and which of its rows comes first is known from the
    input's order, whatever order the encoders see them in.
    """
    import pyarrow as pa

    pc = arrow_compute()

    repeated = scan.repeated
    if plan.only_shards is not None:
        ids = pa.array([r.id for r in repeated], pa.string())
        asked = pc.is_in(ids, value_set=shard_ids(plan.only_shards)).to_pylist()
        repeated = [r for r, keep in zip(repeated, asked, strict=True) if keep]
    if not repeated:
        return
    output = Path(spec.output)
    errors = output / ERRORS_DIR
    reasons = [
        f"{DUPLICATE_ID}: {r.place} repeats the id of {r.first}, the row kept" for r in repeated
    ]
    write_shard(errors_table([r.id for r in repeated], reasons), errors, REPEATED_IDS_SHARD)
    # Counted as errors of this run at once: the pipeline skips these rows as done.
    tally.errors += len(repeated)
    log(f"{len(repeated)} rows repeat an earlier row's id; they are errors, the first rows kept")
    written = committed_shards(output, DATA_DIR) + committed_shards(output, ERRORS_DIR)
    done = shard_ids([shard for shard in written if Path(shard).name != REPEATED_IDS_SHARD])
    first_ids = pa.array(sorted({r.id for r in repeated}), pa.string())
    todo = pc.filter(first_ids, pc.invert(pc.is_in(first_ids, value_set=done))).to_pylist()
    if todo:
        summary = encode_rows(plan, first_rows(spec.input, scan, todo), options)
        # Their rows come again in the pipeline, skipped as done: counted there.
        tally.add({**summary, "rows": np.zeros(1, np.int64)})


def _encode_with_retries(
    spec: JobSpec,
    plan: Callable[..., EncodePlan],
    options: dict[str, Any],
    batch_size: int,
    tally: RunTally,
    progress: ProgressLog,
) -> None:
    """Run the pipeline, adding what its batches did to `tally`; when an encoder actor
    dies for good (it died more often than Ray restarts it), run it again from the
    shards written so far, as a re-run of the command would.

    The summaries of batches in flight when an actor died are lost: the tally can fall
    short after a retry.

    Raises:
        EncodersDiedError: `PIPELINE_ATTEMPTS` attempts in a row wrote no new shard.
    """
    from ray.exceptions import ActorDiedError

    output = Path(spec.output)
    fruitless = 0
    while True:
        done = committed_shards(output, DATA_DIR) + committed_shards(output, ERRORS_DIR)
        dataset = encode_dataset(
            plan(done_shards=done), batch_size, spec.workers, options, progress.total
        )
        try:
            follow(dataset, tally, progress)
            return
        except ActorDiedError as exc:
            failure = str(exc).splitlines()[0]
        # A job that keeps writing shards keeps going, however often its actors die; one
        # whose actors die before writing anything (a batch that crashes its encoder
        # every time) stops.
        wrote = len(committed_shards(output, DATA_DIR) + committed_shards(output, ERRORS_DIR))
        fruitless = 0 if wrote > len(done) else fruitless + 1
        if fruitless == PIPELINE_ATTEMPTS:
            raise EncodersDiedError(
                f"encoder actors died {fruitless} times in a row without writing a shard "
                f"(last: {failure}); re-run the command to resume"
            )
        progress.log(f"an encoder actor died ({failure}); resuming from the shards written")
        prepare_folders(output)


def _output_rows(output: Path) -> int:
    """Rows in an output's shards (vectors and errors)."""
    return len(shard_ids(committed_shards(output, DATA_DIR) + committed_shards(output, ERRORS_DIR)))


def _record_run(run: RunRecord, tally: RunTally, finished: float, rows_added: int) -> None:
    """Write a run's counts and timings into its record: the rows it added to the
    output (counted from the files), and its rates."""
    run.finished = finished
    run.rows_processed = rows_added
    run.texts_embedded = tally.texts_embedded
    run.rows_per_s = rows_added / max(finished - run.started, 1e-9)
    run.steady_texts_per_s = tally.steady_texts_per_s()
    if tally.texts_embedded:
        run.first_batch_s = tally.first_finished - run.started


def _check_embeds_images(config: EmbedServeConfig, backend_name: str) -> None:
    """Refuse an image input for a backend whose kind embeds only texts.

    Raises:
        JobStartError: the backend's kind does not declare the image modality.
    """
    kind = config.backends[backend_name].kind
    if Modality.IMAGE not in default_registry().get(kind).backend_class.modalities:
        raise JobStartError(f"backend {backend_name} ({kind}) does not embed images")


def check_outputs(config: EmbedServeConfig, backend_name: str, spec: JobSpec) -> None:
    """Refuse sparse output from a backend whose kind produces none.

    Raises:
        JobStartError: the job asks for sparse vectors the backend cannot produce.
    """
    kind = config.backends[backend_name].kind
    if not spec.sparse or _has_sparse(kind):
        return
    others = sorted(name for name, b in config.backends.items() if _has_sparse(b.kind))
    configured = f"; configured backends with sparse output: {', '.join(others)}" if others else ""
    raise JobStartError(
        f"backend {backend_name} ({kind}) has no sparse output: drop --sparse, or use a "
        f"backend kind that has one (such as bge-m3){configured}"
    )


def _has_sparse(kind: str) -> bool:
    return OutputKind.SPARSE in default_registry().get(kind).backend_class.outputs


def _only_shards(earlier_output: str) -> list[str]:
    shards = committed_shards(Path(earlier_output), DATA_DIR)
    if not shards:
        raise JobStartError(f"{earlier_output} holds no vectors to re-encode")
    return shards


def _summary(manifest: Manifest) -> str:
    counts = manifest.counts
    run = manifest.runs[-1]
    return (
        f"done: {counts.embedded} embedded, {counts.errors} errors, "
        f"{counts.input_rows} input rows; this run {run.rows_processed} rows in "
        f"{(run.finished or run.started) - run.started:.1f}s ({run.rows_per_s or 0:.1f} rows/s); "
        f"space {manifest.space.space_id}"
    )


def main(argv: list[str] | None = None) -> int:
    """Entrypoint: one argument, the job spec as JSON. The job's log (standard output)
    gets its progress and errors; Ray's output goes beside it (bulk.job_console)."""
    ray_output = send_ray_output_beside_the_job_log()
    args = sys.argv[1:] if argv is None else argv
    spec = JobSpec.model_validate_json(args[0])
    try:
        run_job(spec)
    except BulkError as exc:
        print(f"embedserve job failed: {exc}", flush=True)
        return 2
    except Exception as exc:
        traceback.print_exc()
        where = f" (traceback in {ray_output})" if ray_output else ""
        print(f"embedserve job failed: {type(exc).__name__}: {exc}{where}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
