"""`cluster/local.sh stop` leaves no stale Ray address behind, and touches only its own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "cluster" / "local.sh"
HEAD = "127.0.0.1:6390"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A state dir whose head is a real process group started as local.sh starts one
    (`setsid ... &` from a shell that exits), and its pid."""
    state = tmp_path / "local-cluster"
    state.mkdir()
    launched = subprocess.run(
        ["bash", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    head = int(launched.stdout)
    (state / "head.pid").write_text(f"{head}\n")
    (state / "address").write_text(f"{HEAD}\n")
    (tmp_path / "ray").mkdir()
    yield state, head
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(state: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EMBEDSERVE_LOCAL_CLUSTER_DIR": str(state),
        "RAY_TMPDIR": str(state.parent),
    }
    return subprocess.run(
        ["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=60
    )


def test_stop_removes_rays_address_file_naming_its_head(
    cluster: tuple[Path, int],
) -> None:
    # `ray start --head` wrote it; `ray.init()`, `serve run` and `ray status` would retry
    # the dead head's address for minutes.
    state, head = cluster
    pointer = state.parent / "ray" / "ray_current_cluster"
    pointer.write_text(HEAD)

    stopped = _stop(state)
    assert stopped.returncode == 0, stopped.stderr
    assert not _alive(head)
    assert not pointer.exists()


def test_stop_keeps_an_address_file_of_another_cluster(
    cluster: tuple[Path, int],
) -> None:
    state, head = cluster
    pointer = state.parent / "ray" / "ray_current_cluster"
    pointer.write_text("127.0.0.1:6379")  # a `ray start --head` since, not this script's

    assert _stop(state).returncode == 0
    assert not _alive(head)
    assert pointer.read_text() == "127.0.0.1:6379"
