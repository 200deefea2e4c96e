"""Reaching Ray's job API: submit bulk jobs, follow them, list, inspect and stop them.

The same API as `ray job submit`, through `JobSubmissionClient`. Without an address the
local cluster's dashboard is used, and a local Ray is started (`ray start --head`) when
none is running, so a job outlives the command that submitted it.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from embedserve.bulk.spec import BulkError, JobSpec

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

LOCAL_DASHBOARD = "http://127.0.0.1:8265"
JOB_MODULE = "embedserve.bulk.job"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_NO_AGENT = "No available agent to submit job"
AGENT_WAIT_S = 60.0
STOP_WAIT_S = 15.0
# The lines of a job's log that say how far it is (bulk.progress) or why it waits
# (bulk.resources).
_PROGRESS_PREFIXES = ("progress ", "pending: ")


class ClusterUnreachable(BulkError):
    """No Ray dashboard answers at the address."""


def dashboard_url(address: str | None) -> str:
    """The job API's URL: `host:port` gets `http://`; None is the local dashboard."""
    if address is None:
        return LOCAL_DASHBOARD
    return address if "://" in address else f"http://{address}"


def is_local(address: str | None) -> bool:
    """Whether the cluster's head is this machine (the job can use this Python)."""
    return address is None or urlparse(dashboard_url(address)).hostname in _LOOPBACK


def connect(address: str | None, start_local: bool = False) -> JobSubmissionClient:
    """A job client; with no address and `start_local`, start a local Ray if needed.

    Ray 2.60 clusters require token auth from clients: call `use_ray_token_auth` before
    Ray is first imported (the CLI verbs do), because Ray reads the mode once.

    Raises:
        ClusterUnreachable: no dashboard answers (and none was started).
    """
    from ray.job_submission import JobSubmissionClient

    url = dashboard_url(address)
    try:
        return JobSubmissionClient(url)
    except ConnectionError:
        if address is not None or not start_local:
            raise ClusterUnreachable(
                f"no Ray dashboard at {url}; start Ray (`ray start --head`) or pass --address"
            ) from None
    start_local_ray()
    return JobSubmissionClient(url)


def start_local_ray() -> None:
    """`ray start --head` with the dashboard (the job API needs it), from this Python."""
    from embedserve.runtime.overlay_env import registered_env

    ray_cli = Path(sys.executable).with_name("ray")
    command = [str(ray_cli)] if ray_cli.exists() else [sys.executable, "-m", "ray.scripts.scripts"]
    print("starting a local Ray (ray start --head) ...", flush=True)
    subprocess.run(
        [*command, "start", "--head", "--include-dashboard=true", "--dashboard-host=127.0.0.1"],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, **registered_env()},  # its agent loads embedserve's runtime_env plugin
    )
    # It outlives this command (later jobs and `embedserve jobs` use it): say so, and how
    # to stop it, instead of leaving a Ray running unannounced.
    print(
        f"started a local Ray for bulk jobs; it keeps running after this command "
        f"(dashboard {dashboard_url(None)}). Stop it with `ray stop` (which stops every "
        "Ray started with `ray start` on this machine).",
        flush=True,
    )


def entrypoint(spec: JobSpec, python: str) -> str:
    """The job's shell command: this package's job module with the spec as JSON."""
    return f"{shlex.quote(python)} -m {JOB_MODULE} {shlex.quote(spec.model_dump_json())}"


def submit(
    client: JobSubmissionClient,
    spec: JobSpec,
    kind: str,
    python: str,
    env_vars: dict[str, str],
) -> str:
    """Submit a bulk job; returns its submission id (`embedserve-<kind>-...`)."""
    submission = {
        "entrypoint": entrypoint(spec, python),
        "submission_id": f"embedserve-{kind}-{uuid.uuid4().hex[:12]}",
        "runtime_env": {"env_vars": env_vars},
        "metadata": {
            "embedserve": kind,
            "model": spec.model,
            "input": spec.input.path,
            "output": spec.output,
        },
    }
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(**submission)
        except RuntimeError as exc:
            # A cluster that has just started answers before its job agent is up.
            if _NO_AGENT not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def follow(client: JobSubmissionClient, job_id: str, echo: Callable[[str], Any]) -> str:
    """Echo the job's logs as they come until it ends; returns its final status."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            echo(lines.rstrip("\n"))

    asyncio.run(tail())
    return str(client.get_job_status(job_id).value)


def stop(client: JobSubmissionClient, job_id: str, wait_s: float = STOP_WAIT_S) -> str:
    """Stop a job and wait (up to `wait_s`) until it has stopped; its status then."""
    client.stop_job(job_id)
    deadline = time.monotonic() + wait_s
    while not (status := client.get_job_status(job_id)).is_terminal():
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return str(status.value)


def latest_progress(logs: str) -> str | None:
    """A job's latest progress or `pending:` line in its logs, or None."""
    lines = [line for line in logs.splitlines() if line.startswith(_PROGRESS_PREFIXES)]
    return lines[-1] if lines else None


def embedserve_jobs(client: JobSubmissionClient) -> list[Any]:
    """The cluster's jobs submitted by embedserve, oldest first."""
    jobs = [job for job in client.list_jobs() if (job.metadata or {}).get("embedserve")]
    return sorted(jobs, key=lambda job: job.start_time or 0)
