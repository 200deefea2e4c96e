"""Bulk-job tests share one local Ray with a dashboard (the job API needs it).

The Ray is package-scoped: it is shut down after the last bulk test, so the
integration tier's session Ray can start after it in the same pytest process.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from serve_app.bulk.shards import DATA_DIR, committed_shards, iter_shard_tables, shard_vectors

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


def free_port() -> int:
    """A TCP port free on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="package")
def dashboard() -> Iterator[str]:
    """The job API's URL of a local Ray (reused when this process already runs one)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local",  # a Ray of our own, even when another runs on this machine
            num_cpus=4,
            include_dashboard=True,
            dashboard_port=free_port(),
            namespace="embedserve-bulk-tests",
        )
    url = ray._private.worker.get_dashboard_url()
    if not url:
        pytest.skip("this process's Ray has no dashboard, and the job API needs one")
    yield f"http://{url}"
    if started:
        ray.shutdown()


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
