"""A Ray of the command's own, for a bulk job submitted where no Ray runs.

`embedserve encode` with no cluster to submit to starts a Ray head for its job, follows
the job, and stops that Ray when the command ends, however it ends (the job's end,
Ctrl-C, SIGTERM): no Ray outlives the command. The head runs on free ports with a
temporary folder of its own, so it neither takes another Ray's ports nor overwrites the
address file (`/tmp/ray/ray_current_cluster`) that `ray.init("auto")` reads on this
machine; the folder goes when the Ray stops, unless the job failed (its logs are there).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from embedserve.bulk.spec import BulkError
from embedserve.runtime.ingress import free_port

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

START_TIMEOUT_S = 120.0
# Ray's graceful shutdown takes up to half a minute; a job's own Ray holds nothing that
# needs it (the output is committed shard by shard), so what is left is killed sooner.
STOP_GRACE_S = 5.0


def stop_process_group(group: int, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM a process group, and SIGKILL what is left of it after `grace_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


def _ray_command() -> list[str]:
    ray_cli = Path(sys.executable).with_name("ray")
    return [str(ray_cli)] if ray_cli.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


def _head_command(temp_dir: str, dashboard_port: int) -> list[str]:
    """`ray start --head --block` on free ports with its own temporary folder."""
    return [
        *_ray_command(),
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--port={free_port()}",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--temp-dir={temp_dir}",
    ]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class LocalRay:
    """A Ray head started for one command's job; `stop` ends it and all it started."""

    def __init__(self) -> None:
        from embedserve.runtime.overlay_env import registered_env

        self.keep_logs = False  # set when the job failed: its logs are in the folder
        # Short: Ray's socket paths under it must stay within the 107 bytes of AF_UNIX.
        self.temp_dir = tempfile.mkdtemp(prefix="ray-embedserve-")
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        self._output = Path(self.temp_dir, "ray-start.log")
        with self._output.open("wb") as output:  # ray start's own lines: not the console's
            self._head = subprocess.Popen(
                _head_command(self.temp_dir, int(self.dashboard.rsplit(":", 1)[1])),
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: the node's processes and no other
                env={**os.environ, **registered_env()},  # loads embedserve's runtime_env plugin
            )

    @property
    def logs(self) -> Path:
        """Ray's logs of this head (its jobs' logs included)."""
        return Path(self.temp_dir, "session_latest", "logs")

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> JobSubmissionClient:
        """A job client, once the head's dashboard answers.

        Raises:
            BulkError: the head exited, or did not answer within `timeout_s`.
        """
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + timeout_s
        while True:
            if self._head.poll() is not None:
                tail = self._output.read_text(errors="replace")[-2000:]
                raise BulkError(f"the local Ray did not start (`ray start` exited):\n{tail}")
            try:
                return JobSubmissionClient(self.dashboard)
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise BulkError(f"the local Ray did not answer in {timeout_s:g}s") from None
                time.sleep(0.5)

    def stop(self) -> None:
        """Stop the head and every process of its group; remove its folder unless
        `keep_logs`. Ctrl-C and SIGTERM wait while it stops (a few seconds)."""
        previous = {
            signum: signal.signal(signum, signal.SIG_IGN)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            stop_process_group(self._head.pid)
            self._head.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if not self.keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def local_ray() -> Iterator[LocalRay]:
    """Start a Ray of the command's own; stop it when the block ends. SIGTERM, like
    Ctrl-C, raises KeyboardInterrupt inside the block, so it too stops the job and Ray.
    Ray's folder (with the logs) is kept when the block sets `keep_logs` or raises an
    error other than an interruption."""
    print("no Ray runs here: starting one for this job ...", flush=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    head: LocalRay | None = None
    try:
        head = LocalRay()
        yield head
    except Exception:
        if head is not None:
            head.keep_logs = True
        raise
    finally:
        if head is not None:
            head.stop()
        signal.signal(signal.SIGTERM, previous)
        if head is not None:
            kept = f"; its logs: {head.logs}" if head.keep_logs else ""
            print(f"stopped the local Ray{kept}", flush=True)
