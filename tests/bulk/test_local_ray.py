"""`embedserve encode` where no Ray runs: it starts a Ray of its own for the job and no
part of that Ray outlives the command, stopped by SIGTERM midway."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from embedserve.bulk.jobs_client import LOCAL_DASHBOARD
from embedserve.cli.ray_auth import ray_address_file
from tests.bulk.conftest import write_jsonl

pytestmark = pytest.mark.integration


def _no_local_dashboard() -> bool:
    try:
        httpx.get(LOCAL_DASHBOARD, timeout=2)
    except httpx.TransportError:
        return True
    return False


def _read_until(process: subprocess.Popen[str], pattern: str, timeout_s: float) -> list[str]:
    """The command's lines up to the first that matches `pattern`."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line, "the command ended early:\n" + "".join(lines)
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no {pattern!r} in {timeout_s}s:\n" + "".join(lines))


def _alive(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.skipif(
    not _no_local_dashboard(), reason=f"a Ray dashboard answers at {LOCAL_DASHBOARD}"
)
def test_sigterm_stops_the_job_and_every_process_of_its_own_ray(tmp_path: Path) -> None:
    # It started `ray start --head` and left it running: after SIGTERM, gcs_server and the
    # autoscaler monitor were alive 25 s later, and /tmp/ray/ray_current_cluster named it.
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": i, "text": f"row {i}"} for i in range(50)])
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "embedserve.cli.main", "encode", str(corpus)]
    encode = subprocess.Popen(
        [*command, "--model", "hash", "--output", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines = _read_until(encode, r"^submitted encode job ", timeout_s=240)
        (head,) = psutil.Process(encode.pid).children()  # `ray start --head --block`
        session = [head, *head.children(recursive=True)]
        options = dict(a.split("=", 1) for a in head.cmdline() if a.startswith("--") and "=" in a)
        assert {"gcs_server", "raylet"} <= {p.name() for p in session}, lines
    finally:
        encode.send_signal(signal.SIGTERM)  # also when the test failed: it stops its Ray
        try:
            rest, _ = encode.communicate(timeout=90)
        finally:
            if encode.poll() is None:
                encode.kill()
    assert encode.returncode == 130, "".join(lines) + rest
    assert "stopped the local Ray" in rest
    deadline = time.monotonic() + 10
    while _alive(session) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive(session) == []
    assert not Path(options["--temp-dir"]).exists()
    # The address file that `ray.init("auto")` reads on this machine never named it.
    assert f":{options['--port']}" not in (_read(ray_address_file()) or "")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
