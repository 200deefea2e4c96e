"""What a bulk job's console shows: the job's own lines (progress, summary, its errors),
not Ray's.

The console of `embedserve encode --wait` and `jobs logs --follow` is the job's log:
what the job's process writes to standard output and error. The job process writes its
own lines to standard output and sends its standard error (Ray's log lines, its core
worker's, library warnings and progress bars) to a file beside the job's log, in Ray's
logs folder. What Ray's job supervisor itself writes into the job's log before the job
starts is left out when the console follows it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Ray's Python log format (`2026-12-08 01:38:06,419\tINFO worker.py:1691 -- ...`) at the
# levels that report, not warn; and the supervisor's line naming the entrypoint (the
# job's whole spec as JSON).
_RAY_INFO = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\t(?:DEBUG|INFO) ")
_SUPERVISOR_ENTRYPOINT = "Running entrypoint for job "
RAY_OUTPUT_SUFFIX = ".ray.log"


def send_ray_output_beside_the_job_log() -> Path | None:
    """When standard output is the job's log file (as Ray's job supervisor runs the job),
    send standard error to `<job log>.ray.log` beside it; the file, or None otherwise.

    Call it before Ray is imported: Ray's core worker writes to the error stream's file
    descriptor, which this replaces.
    """
    try:
        job_log = Path(os.readlink("/proc/self/fd/1"))
    except OSError:
        return None  # not Linux, or no standard output
    if not job_log.is_file():
        return None  # a terminal or a pipe: someone reads both streams
    ray_output = job_log.with_name(job_log.stem + RAY_OUTPUT_SUFFIX)
    descriptor = os.open(ray_output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    return ray_output


def is_console_line(line: str) -> bool:
    """Whether a line of a job's log belongs on the console (Ray's reports do not)."""
    return not (_RAY_INFO.match(line) or line.startswith(_SUPERVISOR_ENTRYPOINT))
