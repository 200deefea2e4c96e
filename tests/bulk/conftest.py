"""Bulk-job tests share one local Ray with a dashboard (the job API needs it).

The Ray is package-scoped: it is shut down after the last bulk test, so another tier's
Ray can start before or after it in the same pytest process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from embedserve.bulk.local_ray import stop_process_group
from embedserve.bulk.shards import DATA_DIR, committed_shards, iter_shard_tables, shard_vectors
from embedserve.cli.ray_auth import use_ray_token_auth
from tests.integration.conftest import free_port

# Ray reads its auth mode once, when first imported: select token mode before that, as
# the CLI does, so this process can join the token-auth cluster started below.
use_ray_token_auth()

FAULTS = {
    "slow": {
        "kind": "faulty-hash",
        "options": {"dimensions": 64, "fault": "slow", "slow_seconds": 0.05},
        "resources": {"num_cpus": 0},
    },
    "nan": {
        "kind": "faulty-hash",
        "options": {"dimensions": 64, "fault": "nan", "fault_after_batches": 1},
        "batching": {"max_batch_size": 4},
        "resources": {"num_cpus": 0},
    },
    "broken": {
        "kind": "faulty-hash",
        "options": {"fault": "unavailable"},
        "resources": {"num_cpus": 0},
    },
    "hash64": {"kind": "hash", "options": {"dimensions": 64}, "resources": {"num_cpus": 0}},
}


@pytest.fixture(scope="package")
def dashboard() -> Iterator[str]:
    """The job API's URL of a local Ray that this process is connected to.

    A head node is started with `ray start --block` on free ports (`ray.init` cannot move
    the dashboard agent off its default port, which another Ray on this machine may hold)
    and stopped afterwards. It has a temporary folder of its own: Ray's job supervisor
    gives each job the address recorded in `<temp dir>/ray_current_cluster`, which every
    other head started on this machine with the default `/tmp/ray` overwrites (a job would
    then join that cluster).
    """
    import ray

    from embedserve.runtime.overlay_env import CACHE_ENV_VAR, registered_env

    gcs, dashboard_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-bulk-")
    # The runtime_env plugin's overlays of this session (tests/bulk/test_nomic_runtime_env.py)
    # in a folder of their own, outside Ray's, as a node's cache is.
    envs = Path(tempfile.mkdtemp(prefix="embedserve-envs-"))
    node_env = {**os.environ, **registered_env(), CACHE_ENV_VAR: str(envs)}
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            "--num-cpus=4",
            "--disable-usage-stats",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--port={gcs}",
            f"--dashboard-port={dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={temp_dir}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the node's processes and no other
        env=node_env,
    )
    try:
        ray.init(address=f"127.0.0.1:{gcs}", namespace="embedserve-bulk-tests")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(CACHE_ENV_VAR, str(envs))  # the tests look where the node builds
            yield f"http://127.0.0.1:{dashboard_port}"
    finally:
        ray.shutdown()
        stop_process_group(head.pid)
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(envs, ignore_errors=True)


@pytest.fixture
def fault_config(tmp_path: Path) -> str:
    """A config with test backends: slow, NaN after one batch, unavailable, small hash."""
    models = {name: {"chain": [name]} for name in FAULTS}
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump({"backends": FAULTS, "models": models}))
    return str(path)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows as JSON lines."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def output_vectors(output: Path) -> dict[str, np.ndarray]:
    """Every vector of an output by id; fails on a repeated id."""
    found: dict[str, np.ndarray] = {}
    for table in iter_shard_tables(committed_shards(output, DATA_DIR)):
        for row_id, vector in zip(
            table.column("id").to_pylist(), shard_vectors(table), strict=True
        ):
            assert row_id not in found, f"id {row_id} is in the output twice"
            found[row_id] = vector
    return found


def output_errors(output: Path) -> dict[str, str]:
    """The errors file as id -> reason."""
    lines = (output / "errors.jsonl").read_text().splitlines()
    return {row["id"]: row["reason"] for row in map(json.loads, lines)}
