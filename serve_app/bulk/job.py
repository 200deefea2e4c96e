"""The job entrypoint: `python -m serve_app.bulk.job SPEC_JSON`, run by Ray's job API.

It checks everything that can fail before any work (config, backend, columns, the
output's space), then runs the pipeline, prints progress lines, and finalises the
output: the errors file, counts verified from the files, the sinks, the manifest.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from serve_app import BackendUnavailable, Modality, default_registry
from serve_app.bulk.finalize import finalize_output
from serve_app.bulk.inputs import check_columns, count_rows
from serve_app.bulk.manifest import Manifest, SpaceInfo, new_run, read_manifest, write_manifest
from serve_app.bulk.pipeline import SUMMARY_COLUMNS, EncodePlan, encode_dataset
from serve_app.bulk.shards import DATA_DIR, ERRORS_DIR, committed_shards, prepare_folders
from serve_app.bulk.spec import BulkError, JobSpec, Log
from serve_app.config import BackendConfig, EmbedServeConfig, load_config
from serve_app.images import ImageLimits

PROGRESS_EVERY_S = 2.0
# Runs of the pipeline before a job gives up on encoder actors that keep dying.
PIPELINE_ATTEMPTS = 3


class JobStartError(BulkError):
    """The job cannot start; the message says why (nothing was written)."""


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

    backend_config = config.backends[backend_name]
    probe = ray.remote(max_retries=0, **actor_options)(_probe)
    try:
        capabilities = ray.get(probe.remote(backend_config.model_dump(mode="json")))
    except ray.exceptions.RayTaskError as exc:
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


def run_job(spec: JobSpec, log: Log = print) -> Manifest:
    """Run one bulk job in a process connected to Ray (started locally if need be).

    Args:
        spec: what to encode, with which model, into which folder.
        log: where progress lines go (stdout: the job's logs).

    Returns:
        The final manifest, also written to the output folder.

    Raises:
        JobStartError: the job could not start; nothing was written.
    """
    config, backend_name, options, space = _preflight(spec)
    only_shards = None if spec.only_ids_from is None else _only_shards(spec.only_ids_from)
    output = Path(spec.output)
    manifest = start_manifest(spec, config, space)
    output.mkdir(parents=True, exist_ok=True)
    prepare_folders(output)
    write_manifest(output, manifest)
    total = count_rows(spec.input)
    log(f"encoding {total} rows of {spec.input.path} with {backend_name} into {output}")
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
    )
    processed, texts_embedded = _encode_with_retries(spec, plan, options, total, log)
    run = manifest.runs[-1]
    run.finished = time.time()
    run.rows_processed = processed
    run.rows_per_s = processed / max(run.finished - run.started, 1e-9)
    manifest = finalize_output(spec, manifest, total, texts_embedded, log)
    write_manifest(output, manifest)
    log(_summary(manifest))
    return manifest


def _preflight(spec: JobSpec) -> tuple[EmbedServeConfig, str, dict[str, Any], SpaceInfo]:
    """Everything that can fail before work: config, backend, input, loading the backend.

    Returns the config, the backend's name, its encoders' actor options and its space.
    """
    import ray
    from ray.data import DataContext

    from deployments.app import actor_options, replica_env_vars

    config = load_config(spec.config)
    backend_name = choose_backend(config, spec)
    if spec.input.format == "images":
        _check_embeds_images(config, backend_name)
    check_columns(spec.input)
    if not ray.is_initialized():
        ray.init()
    DataContext.get_current().enable_progress_bars = False
    options = actor_options(config.backends[backend_name], replica_env_vars(config))
    return config, backend_name, options, probe_space(config, spec.model, backend_name, options)


def _encode_with_retries(
    spec: JobSpec, plan: Callable[..., EncodePlan], options: dict[str, Any], total: int, log: Log
) -> tuple[int, int]:
    """Run the pipeline; when an encoder actor dies (a killed worker, a lost node), run it
    again from the shards written so far, as a re-run of the command would.

    Returns the rows processed (not skipped as done) and the texts the backend embedded.
    """
    import ray

    output = Path(spec.output)
    processed = texts_embedded = 0
    for attempt in range(1, PIPELINE_ATTEMPTS + 1):
        done = committed_shards(output, DATA_DIR) + committed_shards(output, ERRORS_DIR)
        dataset = encode_dataset(plan(done_shards=done), spec.batch_size, spec.workers, options)
        sums = dict.fromkeys(SUMMARY_COLUMNS, 0)
        try:
            _follow(dataset, total, log, sums)
            failure = None
        except ray.exceptions.ActorDiedError as exc:
            if attempt == PIPELINE_ATTEMPTS:
                raise
            failure = str(exc).splitlines()[0]
        processed += sums["rows"] - sums["skipped"]
        texts_embedded += sums["texts_embedded"]
        if failure is None:
            return processed, texts_embedded
        log(f"an encoder actor died ({failure}); resuming from the shards written")
        prepare_folders(output)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _check_embeds_images(config: EmbedServeConfig, backend_name: str) -> None:
    """Refuse an image input for a backend whose kind embeds only texts.

    Raises:
        JobStartError: the backend's kind does not declare the image modality.
    """
    kind = config.backends[backend_name].kind
    if Modality.IMAGE not in default_registry().get(kind).backend_class.modalities:
        raise JobStartError(f"backend {backend_name} ({kind}) does not embed images")


def _only_shards(earlier_output: str) -> list[str]:
    shards = committed_shards(Path(earlier_output), DATA_DIR)
    if not shards:
        raise JobStartError(f"{earlier_output} holds no vectors to re-encode")
    return shards


def _follow(dataset: Any, total: int, log: Log, sums: dict[str, int]) -> None:
    """Run the pipeline, adding its summaries to `sums` and logging rows done / total,
    rows/s and ETA every few seconds."""
    started = last = time.monotonic()
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for name in SUMMARY_COLUMNS:
            sums[name] += int(batch[name].sum())
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S:
            last = now
            log(progress_line(sums["rows"], total, sums["rows"] - sums["skipped"], now - started))


def progress_line(done: int, total: int, processed: int, seconds: float) -> str:
    """`progress 1200/5000 rows (24.0%) 350.2 rows/s ETA 11s` (rate of this run)."""
    rate = processed / seconds if seconds > 0 else 0.0
    eta = f"{(total - done) / rate:.0f}s" if rate > 0 else "?"
    percent = 100.0 * done / total if total else 100.0
    return f"progress {done}/{total} rows ({percent:.1f}%) {rate:.1f} rows/s ETA {eta}"


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
    """Entrypoint: one argument, the job spec as JSON."""
    args = sys.argv[1:] if argv is None else argv
    spec = JobSpec.model_validate_json(args[0])
    try:
        run_job(spec)
    except BulkError as exc:
        print(f"embedserve job failed: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
