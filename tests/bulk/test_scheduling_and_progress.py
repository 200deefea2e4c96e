"""A job next to a server that holds every CPU, Ctrl-C on `encode --wait`, and the
progress lines a small job prints, through Ray's job API as a user runs them."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from embedserve.bulk import jobs_client
from embedserve.cli.main import main
from tests.bulk.conftest import write_jsonl
from tests.bulk.test_jobs import ROWS, _submitted_id, _wait_for_status

pytestmark = pytest.mark.integration
TERMINAL = {"STOPPED", "SUCCEEDED", "FAILED"}
# As the bundled MiniLM does on a 2-core machine: its replicas reserve every CPU.
GREEDY = {
    "backends": {
        "greedy": {"kind": "hash", "options": {"dimensions": 64}, "resources": {"num_cpus": 2}}
    },
    "models": {"greedy": {"chain": ["greedy"]}},
}


class _CpuHolder:
    """Stands in for a served model whose replicas reserve every CPU of the cluster."""

    def ready(self) -> bool:
        return True


@pytest.fixture
def every_cpu_held(dashboard: str) -> Iterator[None]:
    import ray

    holder = ray.remote(num_cpus=ray.cluster_resources()["CPU"])(_CpuHolder).remote()
    ray.get(holder.ready.remote())
    try:
        yield
    finally:
        ray.kill(holder)


@pytest.fixture
def greedy_encode(tmp_path: Path, dashboard: str) -> list[str]:
    """`embedserve encode` of 100 rows with the greedy backend, without --wait."""
    config = tmp_path / "greedy.yaml"
    config.write_text(yaml.safe_dump(GREEDY))
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": i, "text": f"row {i}"} for i in range(100)])
    command = ["encode", str(corpus), "--model", "greedy", "--config", str(config)]
    return [*command, "--output", str(tmp_path / "out"), "--address", dashboard]


def test_a_job_next_to_a_server_holding_every_cpu_shares_the_cores(
    dashboard: str,
    every_cpu_held: None,
    greedy_encode: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(greedy_encode) == 0
    job_id = _submitted_id(capsys.readouterr().out)
    status = _wait_for_status(dashboard, job_id, TERMINAL, timeout_s=180)
    logs = jobs_client.connect(dashboard).get_job_logs(job_id)
    assert status == "SUCCEEDED", logs
    assert "encoders reserve 0 CPUs each, not the backend's 2: the cluster has 0 CPUs free" in logs
    assert "done: 100 embedded, 0 errors" in logs


def test_a_job_whose_encoders_cannot_be_scheduled_says_so_and_fails(
    dashboard: str,
    every_cpu_held: None,
    greedy_encode: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    assert main([*greedy_encode, "--encoder-cpus", "1", "--wait-for-resources", "2"]) == 0
    job_id = _submitted_id(capsys.readouterr().out)
    status = _wait_for_status(dashboard, job_id, TERMINAL, timeout_s=120)
    elapsed = time.monotonic() - started
    logs = jobs_client.connect(dashboard).get_job_logs(job_id)
    assert status == "FAILED", logs
    assert re.search(
        r"pending: the encoders need 1 CPU \(1 encoder x 1 CPU\); the cluster has 0 CPUs free "
        r"of \d CPUs; waiting up to 2s",
        logs,
    )
    assert "the encoders cannot be scheduled: they need 1 CPU" in logs
    assert "Traceback" not in logs
    assert elapsed < 60, f"the job took {elapsed:.0f}s to fail"


def _lines(stream: Iterator[str]) -> queue.Queue[str | None]:
    """The lines of a stream, read in a thread as they come; None at its end."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_ctrl_c_on_wait_stops_the_job_without_a_traceback(
    dashboard: str, tmp_path: Path, fault_config: str
) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": i, "text": f"row {i}"} for i in range(ROWS)])
    command = [str(Path(sys.executable).with_name("embedserve")), "encode", str(corpus)]
    command += ["--model", "slow", "--config", fault_config, "--output", str(tmp_path / "out")]
    command += ["--batch-size", "10", "--address", dashboard, "--wait"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ
    )
    lines, seen = _lines(process.stdout), []
    deadline = time.monotonic() + 120
    while not (seen and seen[-1].startswith("progress ")):
        assert time.monotonic() < deadline, "".join(seen)
        seen.append(lines.get(timeout=120))
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    output = "".join(seen) + "".join(iter(lambda: lines.get(timeout=10), None))
    job_id = _submitted_id(output)
    assert "Traceback" not in output
    assert f"interrupted: stopping job {job_id} (re-run the command to resume)" in output
    assert f"job {job_id} STOPPED" in output
    assert jobs_client.connect(dashboard).get_job_status(job_id).value == "STOPPED"


def test_a_small_job_reports_progress_per_batch(
    dashboard: str, tmp_path: Path, fault_config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"id": i, "text": f"row {i}" if i % 50 else ""} for i in range(200)]
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    command = ["encode", str(corpus), "--model", "slow", "--config", fault_config]
    assert (
        main([*command, "--output", str(tmp_path / "out"), "--address", dashboard, "--wait"]) == 0
    )
    output = capsys.readouterr().out
    progress = re.findall(
        r"^progress (\d+)/200 rows \(\d+\.\d%\) \d+\.\d rows/s ETA (?:\d+s|\?), (\d+) errors?$",
        output,
        re.MULTILINE,
    )
    assert len(progress) >= 5, output  # 200 rows in batches of 32: 7 batches
    assert progress[-1] == ("200", "4")  # the 4 empty texts
    assert [int(done) for done, _ in progress] == sorted(int(done) for done, _ in progress)
