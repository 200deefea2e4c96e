"""`embedserve encode` and `embedserve jobs` through Ray's job API, as a user runs them:
a job stopped midway and run again ends with every id exactly once."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from embedserve.bulk import jobs_client
from embedserve.bulk.manifest import read_manifest
from embedserve.bulk.pipeline import ENCODER_RESTARTS
from embedserve.bulk.shards import DATA_DIR, committed_shards
from embedserve.cli.main import main
from tests.bulk.conftest import output_vectors, write_jsonl

pytestmark = pytest.mark.integration
ROWS = 1200


def _submitted_id(output: str) -> str:
    found = re.search(r"submitted (?:encode|reencode) job (\S+):", output)
    assert found, output
    return found.group(1)


def _wait_for_status(dashboard: str, job_id: str, wanted: set[str], timeout_s: float = 120) -> str:
    client = jobs_client.connect(dashboard)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id).value
        if status in wanted:
            return status
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} is still {status}")


def _encoder_pids(dashboard: str) -> list[int]:
    """Process ids of the cluster's live encoder actors (Ray Data workers of BatchEncoder)."""
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], detail=True)
    return [actor.pid for actor in actors if "BatchEncoder" in actor.class_name]


def _wait_for_shards(dashboard: str, job_id: str, output: Path, count: int) -> None:
    """Wait until a running job has written `count` shards of vectors."""
    client = jobs_client.connect(dashboard)
    deadline = time.monotonic() + 120
    while len(committed_shards(output, DATA_DIR)) < count:
        assert time.monotonic() < deadline, "the job wrote no shards"
        if client.get_job_status(job_id).is_terminal():
            pytest.fail(f"the job ended early:\n{client.get_job_logs(job_id)}")
        time.sleep(0.05)


def _submit_slow_job(
    dashboard: str,
    tmp_path: Path,
    fault_config: str,
    capsys: pytest.CaptureFixture[str],
    batch_size: int,
) -> tuple[list[str], str]:
    """Submit ROWS texts to the `slow` backend, into `tmp_path/out`: the command and job id."""
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": i, "text": f"row {i}"} for i in range(ROWS)])
    command = ["encode", str(corpus), "--model", "slow", "--config", fault_config]
    command += ["--output", str(tmp_path / "out"), "--batch-size", str(batch_size)]
    command += ["--address", dashboard]
    assert main(command) == 0
    return command, _submitted_id(capsys.readouterr().out)


def test_a_stopped_job_resumes_to_every_id_exactly_once(
    dashboard: str, tmp_path: Path, fault_config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    command, job_id = _submit_slow_job(dashboard, tmp_path, fault_config, capsys, 40)
    _wait_for_shards(dashboard, job_id, output, 3)
    assert main(["jobs", "stop", job_id, "--address", dashboard]) == 0
    assert _wait_for_status(dashboard, job_id, {"STOPPED", "SUCCEEDED", "FAILED"}) == "STOPPED"
    partial = output_vectors(output)
    assert 0 < len(partial) < ROWS, "the job was not stopped midway"

    assert main([*command, "--wait"]) == 0
    logs = capsys.readouterr().out
    assert re.search(r"progress \d+/1200 rows", logs) or "done: 1200 embedded" in logs
    vectors = output_vectors(output)  # fails on a repeated id
    assert sorted(vectors, key=int) == [str(i) for i in range(ROWS)]
    manifest = read_manifest(output)
    assert manifest.status == "complete"
    assert len(manifest.runs) == 2
    assert manifest.runs[1].rows_processed == ROWS - len(partial)


def test_a_killed_encoder_actor_costs_no_id(
    dashboard: str, tmp_path: Path, fault_config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    _, job_id = _submit_slow_job(dashboard, tmp_path, fault_config, capsys, 10)
    _wait_for_shards(dashboard, job_id, output, 3)
    (pid,) = _encoder_pids(dashboard)
    # As the OOM killer would: Ray restarts the actor and retries its batch.
    os.kill(pid, signal.SIGKILL)
    written_at_kill = len(committed_shards(output, DATA_DIR))
    assert written_at_kill < ROWS // 10, "the job ended before the kill"

    status = _wait_for_status(dashboard, job_id, {"STOPPED", "SUCCEEDED", "FAILED"})
    logs = jobs_client.connect(dashboard).get_job_logs(job_id)
    assert status == "SUCCEEDED", logs
    assert "resuming from the shards written" not in logs
    vectors = output_vectors(output)  # fails on a repeated id
    assert sorted(vectors, key=int) == [str(i) for i in range(ROWS)]
    assert read_manifest(output).counts.distinct_ids == ROWS


def test_an_encoder_actor_dead_for_good_makes_the_job_run_its_pipeline_again(
    dashboard: str, tmp_path: Path, fault_config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    _, job_id = _submit_slow_job(dashboard, tmp_path, fault_config, capsys, 10)
    killed: set[int] = set()
    # Ray restarts the actor ENCODER_RESTARTS times; the kill after that is for good,
    # and the job itself must resume from its shards, with a new actor pool.
    for _ in range(ENCODER_RESTARTS + 1):
        _wait_for_shards(dashboard, job_id, output, len(committed_shards(output, DATA_DIR)) + 2)
        (pid,) = _encoder_pids(dashboard)
        assert pid not in killed, "the actor was not restarted in a new process"
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    assert len(committed_shards(output, DATA_DIR)) < ROWS // 10, "the job ended before"

    status = _wait_for_status(dashboard, job_id, {"STOPPED", "SUCCEEDED", "FAILED"})
    logs = jobs_client.connect(dashboard).get_job_logs(job_id)
    assert status == "SUCCEEDED", logs
    assert "an encoder actor died (The actor died unexpectedly" in logs
    assert logs.count("resuming from the shards written") == 1
    vectors = output_vectors(output)  # fails on a repeated id
    assert sorted(vectors, key=int) == [str(i) for i in range(ROWS)]
    manifest = read_manifest(output)
    assert manifest.counts.distinct_ids == ROWS
    (run,) = manifest.runs
    assert run.rows_processed == ROWS  # counted from the files: lost summaries don't matter


def test_jobs_verbs_list_status_and_logs(
    dashboard: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": i, "text": f"row {i}"} for i in range(50)])
    output = tmp_path / "out"
    args = ["encode", str(corpus), "--model", "hash", "--output", str(output)]
    assert main([*args, "--address", dashboard, "--wait"]) == 0
    job_id = _submitted_id(capsys.readouterr().out)
    assert main(["jobs", "list", "--address", dashboard]) == 0
    listed = capsys.readouterr().out
    assert re.search(rf"{job_id}\s+SUCCEEDED .* encode\s+hash -> {output}", listed)
    assert main(["jobs", "status", job_id, "--address", dashboard]) == 0
    status = capsys.readouterr().out
    assert f"{job_id}: SUCCEEDED" in status
    assert "complete, space hash-" in status
    assert "50 embedded, 0 errors of 50 rows" in status
    assert main(["jobs", "logs", job_id, "--address", dashboard]) == 0
    assert "done: 50 embedded, 0 errors" in capsys.readouterr().out


def test_a_job_that_cannot_start_fails_with_the_reason(
    dashboard: str, tmp_path: Path, fault_config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": 1, "text": "hello"}])
    args = ["encode", str(corpus), "--model", "broken", "--config", fault_config]
    assert main([*args, "--output", str(tmp_path / "out"), "--address", dashboard, "--wait"]) == 1
    output = capsys.readouterr().out
    assert "is unavailable: faulty-hash was configured to be unavailable" in output
    assert re.search(r"job \S+ FAILED", output)


def test_typos_fail_before_submitting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": 1, "body": "hello"}])
    assert main(["encode", str(corpus), "--model", "nope", "--output", str(tmp_path)]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["encode", str(corpus), "--model", "hash", "--output", str(tmp_path)]) == 2
    assert "no text column 'text'" in capsys.readouterr().err
    args = ["encode", str(corpus), "--model", "hash", "--sparse", "--output", str(tmp_path)]
    assert main(args) == 2
    assert "backend hash (hash) has no sparse output" in capsys.readouterr().err
