"""The bulk verbs of `embedserve`: encode, reencode, jobs list|status|logs|stop.

The command checks what it can before submitting (config, model, backend, input
columns), so a typo fails here with status 2 instead of in a job. Ray is imported only
when a verb runs.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedserve.bulk.spec import BulkError, InputSpec, JobSpec, QdrantSpec, detect_format
from embedserve.cli.ray_auth import use_ray_token_auth
from embedserve.runtime.placement import replica_env_vars

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

Handler = Callable[[argparse.Namespace], int]


def _bulk_verb(handler: Handler) -> Handler:
    """Select Ray's token auth before Ray is imported (it reads the mode once), turn a
    bulk error into a message and exit status 2, like config errors, and Ctrl-C into
    exit status 130 without a traceback (the verbs that follow a job say what of it)."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        use_ray_token_auth()
        try:
            return handler(args)
        except BulkError as exc:
            print(f"embedserve: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\nembedserve: interrupted", file=sys.stderr)
            return 130

    return run


def add_bulk_verbs(verbs: argparse._SubParsersAction) -> None:
    """Add `encode`, `reencode` and `jobs` to the `embedserve` parser's verbs."""
    encode = verbs.add_parser("encode", help="embed a corpus as a Ray job")
    encode.add_argument("input", help="a JSONL, CSV or Parquet file, a folder or a glob")
    encode.add_argument("--output", required=True, help="output folder")
    encode.add_argument("--format", choices=["jsonl", "csv", "parquet", "images"])
    encode.add_argument("--id-column", default="id")
    encode.add_argument("--text-column", default="text")
    _add_job_options(encode)
    encode.set_defaults(handler=_bulk_verb(cmd_encode))

    reencode = verbs.add_parser("reencode", help="embed an earlier output's ids with another model")
    reencode.add_argument("old_output", help="a finished embedserve output folder")
    reencode.add_argument("--source", required=True, help="the original input")
    reencode.add_argument("--output", help="default: beside the old output, named by space")
    _add_job_options(reencode)
    reencode.set_defaults(handler=_bulk_verb(cmd_reencode))

    jobs = verbs.add_parser("jobs", help="list, inspect and stop bulk jobs")
    jobs_verbs = jobs.add_subparsers(dest="jobs_verb", required=True)
    for name, handler, help_text in (
        ("list", cmd_jobs_list, "embedserve jobs of the cluster"),
        ("status", cmd_jobs_status, "a job's status"),
        ("logs", cmd_jobs_logs, "a job's logs"),
        ("stop", cmd_jobs_stop, "stop a job (re-run its command to resume)"),
    ):
        verb = jobs_verbs.add_parser(name, help=help_text)
        if name != "list":
            verb.add_argument("job_id")
        if name == "logs":
            verb.add_argument("--follow", action="store_true", help="until the job ends")
        verb.add_argument("--address", help="Ray dashboard (default: the local one)")
        verb.set_defaults(handler=_bulk_verb(handler))


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="public model name from the config")
    parser.add_argument("--backend", help="default: the first backend of the model's chain")
    parser.add_argument("--config", help="config file (default: the bundled config)")
    parser.add_argument("--input-type", choices=["query", "document"])
    parser.add_argument(
        "--sparse", action="store_true", help="also write sparse vectors (e.g. bge-m3)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="rows per batch and shard (default: 512, fewer for a small input)",
    )
    parser.add_argument("--workers", type=int, default=1, help="encoder actors")
    parser.add_argument(
        "--encoder-cpus",
        type=float,
        help="CPUs each encoder reserves (default: the backend's when free, else what is "
        "free, down to 0: sharing the cores with a server)",
    )
    parser.add_argument(
        "--wait-for-resources",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long the job waits for its encoders' resources (default 60)",
    )
    parser.add_argument(
        "--faiss", nargs="?", const="Flat", help="also build a FAISS index (factory string)"
    )
    parser.add_argument("--qdrant", help="also upsert into Qdrant: a URL or local folder")
    parser.add_argument("--qdrant-collection", help="default: the model name")
    parser.add_argument(
        "--address",
        help="Ray dashboard (default: the local one; with none, a Ray of this command's own, "
        "stopped when it ends)",
    )
    parser.add_argument("--wait", action="store_true", help="follow progress until the end")


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().absolute())


def _job_spec(
    args: argparse.Namespace, input_spec: InputSpec, output: str, **extra: Any
) -> JobSpec:
    qdrant = None
    if args.qdrant:
        location = args.qdrant if "://" in args.qdrant else _absolute(args.qdrant)
        qdrant = QdrantSpec(location=location, collection=args.qdrant_collection or args.model)
    return JobSpec(
        input=input_spec,
        output=_absolute(output),
        model=args.model,
        backend=args.backend,
        config=_absolute(args.config) if args.config else None,
        batch_size=args.batch_size,
        workers=args.workers,
        encoder_cpus=args.encoder_cpus,
        resource_wait_s=args.wait_for_resources,
        input_type=args.input_type,
        sparse=args.sparse,
        faiss=args.faiss,
        qdrant=qdrant,
        **extra,
    )


def cmd_encode(args: argparse.Namespace) -> int:
    """Submit an encoding job; with --wait follow it to the end."""
    path = _absolute(args.input)
    input_spec = InputSpec(
        path=path,
        format=args.format or detect_format(path),
        id_column=args.id_column,
        text_column=args.text_column,
    )
    return _submit(args, _job_spec(args, input_spec, args.output), "encode")


def cmd_reencode(args: argparse.Namespace) -> int:
    """Submit a job embedding an earlier output's ids with another model, beside it."""
    from embedserve.bulk.job import choose_backend
    from embedserve.bulk.reencode import check_new_space, default_output, reencode_input
    from embedserve.config import load_config

    old_output = Path(_absolute(args.old_output))
    input_spec = reencode_input(old_output, _absolute(args.source))
    config = load_config(args.config)
    probe = _job_spec(args, input_spec, args.output or str(old_output))
    new_space = config.space_id(choose_backend(config, probe))
    output = Path(args.output) if args.output else default_output(old_output, new_space)
    check_new_space(old_output, output, new_space)
    spec = _job_spec(args, input_spec, str(output), only_ids_from=str(old_output))
    return _submit(args, spec, "reencode")


def _submit(args: argparse.Namespace, spec: JobSpec, kind: str) -> int:
    """Check the job, then submit it to the cluster at --address or the local one; with
    neither running, to a Ray of this command's own that stops when the command ends."""
    from embedserve.bulk import jobs_client
    from embedserve.bulk.inputs import check_columns
    from embedserve.bulk.job import check_outputs, choose_backend
    from embedserve.config import load_config

    config = load_config(spec.config)
    check_outputs(config, choose_backend(config, spec), spec)
    if spec.input.format != "images":
        check_columns(spec.input)
    env_vars = replica_env_vars(config)
    try:
        client = jobs_client.connect(args.address)
    except jobs_client.ClusterUnreachable:
        if args.address is not None:
            raise
    else:
        python = sys.executable if jobs_client.is_local(args.address) else "python"
        job_id = _submit_job(client, spec, kind, python, env_vars)
        return _follow(client, job_id) if args.wait else _say_how_to_follow(job_id)
    return _run_on_own_ray(spec, kind, env_vars)


def _run_on_own_ray(spec: JobSpec, kind: str, env_vars: dict[str, str]) -> int:
    """Run the job on a Ray started for it, following it to the end (bulk.local_ray)."""
    from embedserve.bulk.local_ray import local_ray

    with local_ray() as head:
        print(f"its dashboard: {head.dashboard}; it stops when this command ends", flush=True)
        client = head.wait_ready()
        job_id = _submit_job(client, spec, kind, sys.executable, env_vars)
        status = _follow(client, job_id)
        head.keep_logs = status == 1  # the job failed: its logs are in Ray's folder
        return status


def _submit_job(
    client: JobSubmissionClient, spec: JobSpec, kind: str, python: str, env_vars: dict[str, str]
) -> str:
    """Submit the job and say so; its id."""
    from embedserve.bulk import jobs_client

    job_id = jobs_client.submit(client, spec, kind, python, env_vars)
    print(f"submitted {kind} job {job_id}: {spec.input.path} -> {spec.output}", flush=True)
    return job_id


def _say_how_to_follow(job_id: str) -> int:
    """Leave the job running: say how to follow it."""
    print(f"follow it with: embedserve jobs logs {job_id} --follow", flush=True)
    return 0


def _follow(client: JobSubmissionClient, job_id: str) -> int:
    """Echo the job's log until it ends: 0 when it succeeded, 1 when not, 130 when
    interrupted (the job is then stopped)."""
    from embedserve.bulk import jobs_client

    try:
        status = jobs_client.follow(client, job_id, lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        return _stop_interrupted(client, job_id)
    print(f"job {job_id} {status}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


def _stop_interrupted(client: JobSubmissionClient, job_id: str) -> int:
    """Ctrl-C while following a job: stop it (its output stays resumable); exit 130."""
    from embedserve.bulk import jobs_client

    print(f"\ninterrupted: stopping job {job_id} (re-run the command to resume)", flush=True)
    try:
        status = jobs_client.stop(client, job_id)
    except KeyboardInterrupt:
        status = "not stopped yet"
    print(f"job {job_id} {status}", flush=True)
    if status != "STOPPED":
        print(f"stop it with: embedserve jobs stop {job_id}", flush=True)
    return 130


def cmd_jobs_list(args: argparse.Namespace) -> int:
    """One line per embedserve job: id, status, kind, model, output."""
    from embedserve.bulk import jobs_client

    jobs = jobs_client.embedserve_jobs(jobs_client.connect(args.address))
    for job in jobs:
        meta = job.metadata or {}
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((job.start_time or 0) / 1000))
        print(
            f"{job.submission_id}  {job.status.value:<9} {started}  {meta['embedserve']:<8} "
            f"{meta.get('model', '?')} -> {meta.get('output', '?')}"
        )
    if not jobs:
        print("no embedserve jobs")
    return 0


def cmd_jobs_status(args: argparse.Namespace) -> int:
    """A job's status and message, its latest progress (or why it waits) while it runs,
    and its output's counts when the manifest is readable."""
    from embedserve.bulk import jobs_client
    from embedserve.bulk.manifest import read_manifest

    client = jobs_client.connect(args.address)
    info = client.get_job_info(args.job_id)
    print(f"{args.job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    if not info.status.is_terminal():
        latest = jobs_client.latest_progress(client.get_job_logs(args.job_id))
        print(latest or "no progress yet (embedserve jobs logs ID shows the log)")
    output = (info.metadata or {}).get("output")
    manifest = read_manifest(output) if output and Path(output).is_dir() else None
    if manifest is not None:
        counts = manifest.counts
        print(
            f"output {output}: {manifest.status}, space {manifest.space.space_id}, "
            f"{counts.embedded} embedded, {counts.errors} errors of {counts.input_rows} rows"
        )
    return 0


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    """Print a job's logs (with --follow, until it ends)."""
    from embedserve.bulk import jobs_client

    client = jobs_client.connect(args.address)
    if args.follow:
        try:
            jobs_client.follow(client, args.job_id, lambda line: print(line, flush=True))
        except KeyboardInterrupt:
            print(
                f"\nstopped following; the job goes on (embedserve jobs stop {args.job_id} "
                "stops it)",
                flush=True,
            )
            return 130
    else:
        print(client.get_job_logs(args.job_id), end="")
    return 0


def cmd_jobs_stop(args: argparse.Namespace) -> int:
    """Stop a job; its output stays resumable."""
    from embedserve.bulk import jobs_client

    stopped = jobs_client.connect(args.address).stop_job(args.job_id)
    print(f"{args.job_id}: {'stopping' if stopped else 'not running'}")
    return 0
