"""Reaching Ray's job API: submit bulk jobs, follow them, list, inspect and stop them.

The same API as `ray job submit`, through `JobSubmissionClient`. Without an address the
local cluster's dashboard is used (`embedserve encode` starts a Ray of its own when none
answers: bulk.local_ray).
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from embedserve.bulk.job_console import is_console_line
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


def connect(address: str | None) -> JobSubmissionClient:
    """A job client of the cluster at `address` (None: the local dashboard).

    Ray 2.60 clusters require token auth from clients: call `use_ray_token_auth` before
    Ray is first imported (the CLI verbs do), because Ray reads the mode once.

    Raises:
        ClusterUnreachable: no dashboard answers.
    """
    from ray.job_submission import JobSubmissionClient

    url = dashboard_url(address)
    try:
        return JobSubmissionClient(url)
    except ConnectionError:
        raise ClusterUnreachable(
            f"no Ray dashboard at {url}; start Ray (`ray start --head`) or pass --address"
        ) from None


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
    """Echo the lines of the job's log that belong on a console (bulk.job_console) as
    they come, until the job ends; returns its final status."""

    # The job client logs at INFO when a log stream closes: not the console's business.
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            for line in lines.splitlines():
                if is_console_line(line):
                    echo(line)

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
