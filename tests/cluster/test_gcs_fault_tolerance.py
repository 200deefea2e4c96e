"""Losing the head's GCS server under load, with Ray's GCS fault tolerance on a real Redis.

The head is started by `cluster/local.sh start --gcs-redis` (Debian's `redis-server` on a
free port, a fresh one per test: a new head on a Redis that holds a session picks that
session up), with token authentication as `ray start` clusters have it. The app is
deployed the way `serve deploy` does it. Then `gcs_server` is killed with SIGKILL while
requests keep coming, and the script's keeper starts it again after `OUTAGE_S`.

Without Redis, `test_without_redis_serving_ends_when_the_raylet_gives_up_on_the_gcs`
measures how long serving survives (about 2 minutes; EMBEDSERVE_MEASURE_GCS_LOSS=1 runs it).

These tests run outside this process's Ray: every client is a process of its own, so
nothing here depends on which tier ran before.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import pytest
import yaml

from embedserve.deployments.app import APP_NAME
from embedserve.deployments.status import ClusterStatus
from tests.cluster.conftest import cli_status, expected_vectors, vectors_of, wait_for
from tests.integration.conftest import free_port

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OUTAGE_S = 10.0  # how long the GCS stays dead before the keeper starts it again
APP_CONFIG = {
    "server": {"router_num_cpus": 0.1},
    "backends": {
        "hash": {"kind": "hash", "options": {"dimensions": 64}, "resources": {"num_cpus": 0.1}}
    },
    "models": {"hash": {"chain": ["hash"]}},
}
# The canary registry's keys in the GCS's internal KV, read by a client of its own.
DUMP_REFERENCES = """
import json, sys, ray
from ray.experimental import internal_kv as kv
from embedserve.deployments.canary_registry import KEY_PREFIX, KV_NAMESPACE
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
keys = kv._internal_kv_list(KEY_PREFIX, namespace=KV_NAMESPACE)
print(json.dumps({k.decode(): kv._internal_kv_get(k, namespace=KV_NAMESPACE).decode()
                  for k in keys if b"/reference/" in k}))
"""


def _gcs_keeper() -> ModuleType:
    """cluster/gcs_keeper.py (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("gcs_keeper", REPO / "cluster/gcs_keeper.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gcs_keeper = _gcs_keeper()


@dataclass
class LocalCluster:
    """A cluster that `cluster/local.sh` runs, with a state dir and Ray temp dir of its own."""

    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "EMBEDSERVE_LOCAL_CLUSTER_DIR": str(self.root / "state"),
            "RAY_TMPDIR": str(self.root),  # its own ray_current_cluster
            "RAY": str(BIN / "ray"),
            "PYTHON": sys.executable,
            "RAY_AUTH_MODE": "token",
            "EMBEDSERVE_LOCAL_CLUSTER_STOP_GRACE_S": "2",  # nothing to drain here
        }

    def script(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `cluster/local.sh ARGS`."""
        command = ["bash", str(REPO / "cluster/local.sh"), *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=300)

    def state(self, name: str) -> str:
        return (self.root / "state" / name).read_text().strip()

    @property
    def address(self) -> str:
        return self.state("address")

    @property
    def dashboard(self) -> str:
        return self.state("dashboard")

    @property
    def head_group(self) -> int:
        """The process group of the head node's processes."""
        return int(self.state("head.pid"))

    @property
    def ray_address_file(self) -> Path:
        return self.root / "ray" / "ray_current_cluster"


@contextmanager
def local_sh_cluster(*start_args: str) -> Iterator[LocalCluster]:
    """A head node started by `local.sh start --workers 0 ARGS`, stopped by `local.sh stop`."""
    # Short: Ray's socket paths under the temp dir must fit in 107 bytes.
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="es-gcs-", dir="/tmp")))
    try:
        started = cluster.script("start", "--port", str(free_port()), "--workers", "0", *start_args)
        assert started.returncode == 0, f"{started.stdout}{started.stderr}"
        yield cluster
    finally:
        cluster.script("stop")
        shutil.rmtree(cluster.root, ignore_errors=True)


@dataclass
class BareHead:
    """A head node of `ray start --head` without --block: no process watches the GCS."""

    root: Path
    address: str
    dashboard: str
    head_group: int

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "RAY_TMPDIR": str(self.root), "RAY_AUTH_MODE": "token"}


@contextmanager
def bare_head() -> Iterator[BareHead]:
    """A head on free ports in a temp dir of its own, with token auth; killed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="es-gcs-", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(root), "RAY_AUTH_MODE": "token"}
    token = [str(BIN / "ray"), "get-auth-token", "--generate"]  # prints it: not to the log
    subprocess.run(token, env=env, check=True, stdout=subprocess.DEVNULL)
    dashboard = free_port()
    command = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1"]
    command += [f"--port={free_port()}", "--num-cpus=2", f"--dashboard-port={dashboard}"]
    for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port"):
        command.append(f"--{flag}={free_port()}")
    for flag in ("metrics-export-port", "runtime-env-agent-port", "ray-client-server-port"):
        command.append(f"--{flag}={free_port()}")
    # A session of its own: its process group is the node's processes and no others.
    start = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        assert start.wait(timeout=300) == 0
        address = (root / "ray/ray_current_cluster").read_text().strip()
        yield BareHead(root, address, f"http://127.0.0.1:{dashboard}", start.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(start.pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[str]:
    """Debian's redis-server on a free port with a folder of its own; yields HOST:PORT."""
    if shutil.which("redis-server") is None:
        pytest.skip(
            "no redis-server on PATH: `make test` installs Debian's as root "
            "(apt-get install --no-install-recommends redis-server)"
        )
    port = free_port()
    folder = tempfile.mkdtemp(prefix="es-redis-")
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", folder]
    redis = subprocess.Popen([*command, "--save", ""], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: _accepts(port), 30, "redis-server to listen")
        yield f"127.0.0.1:{port}"
    finally:
        redis.terminate()
        redis.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def deploy(cluster: LocalCluster | BareHead, folder: Path) -> str:
    """`embedserve build-config` then `serve deploy` to the cluster; returns the app's URL."""
    port = free_port()
    config, serve_config = folder / "embedserve.yaml", folder / "serve.yaml"
    config.write_text(yaml.safe_dump(APP_CONFIG))
    build = [sys.executable, "-m", "embedserve.cli.main", "build-config", str(config)]
    build += ["--host", "127.0.0.1", "--port", str(port), "-o", str(serve_config)]
    subprocess.run(build, check=True, env=cluster.env, timeout=120)
    deploy_command = [str(BIN / "serve"), "deploy", str(serve_config)]
    deploy_command += ["-a", cluster.dashboard]
    subprocess.run(deploy_command, check=True, env=cluster.env, capture_output=True, timeout=120)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(url), 240, "the embedserve app to answer")
    return url


def _answers(url: str) -> bool:
    body = {"model": "hash", "input": "warm-up"}
    try:
        return httpx.post(f"{url}/v1/embeddings", json=body, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Answer:
    """One request of the load: when it was sent, and whether its answer was right."""

    sent_at: float
    status: int  # 0: no HTTP answer (connection error or timeout)
    right_vector: bool


@dataclass
class SteadyLoad:
    """One request every `interval_s` from a thread, each checked against the hash
    backend's vector of its text."""

    url: str
    interval_s: float = 0.05
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> SteadyLoad:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            for number in range(10**9):
                if self._stop.is_set():
                    return
                self.answers.append(self._ask(client, f"text {number}"))
                time.sleep(self.interval_s)

    def _ask(self, client: httpx.Client, text: str) -> Answer:
        sent_at = time.monotonic()
        try:
            response = client.post(
                f"{self.url}/v1/embeddings", json={"model": "hash", "input": [text]}
            )
        except httpx.HTTPError:
            return Answer(sent_at, 0, False)
        right = response.status_code == 200 and bool(
            np.allclose(vectors_of(response), expected_vectors([text]), atol=1e-6)
        )
        return Answer(sent_at, response.status_code, right)

    def wrong(self) -> list[Answer]:
        """Requests without an answer, with an error status or with a wrong vector."""
        return [answer for answer in self.answers if not answer.right_vector]


def canary_references(address: str) -> dict[str, str]:
    """The canary references the GCS's internal KV holds, by key."""
    command = [sys.executable, "-c", DUMP_REFERENCES, address]
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    dumped = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert dumped.returncode == 0, dumped.stderr
    return json.loads(dumped.stdout.strip().splitlines()[-1])


def replica_ids(status: ClusterStatus) -> set[str]:
    """The RUNNING replicas of the embedserve app."""
    (app,) = [a for a in status.applications if a.name == APP_NAME]
    return {r.replica_id for d in app.deployments for r in d.replicas if r.state == "RUNNING"}


def test_serving_goes_on_while_the_gcs_is_dead_and_the_cluster_state_comes_back(
    tmp_path: Path,
) -> None:
    with (
        redis_server() as redis,
        local_sh_cluster("--gcs-redis", redis, "--gcs-restart-after", str(OUTAGE_S)) as cluster,
    ):
        url = deploy(cluster, tmp_path)
        address = cluster.address
        # The replica records the reference before it serves, and reports its canary then.
        references = canary_references(address)
        assert len(references) == 1, "the hash space's reference"
        before = cli_status(address, "token")
        assert before.canaries, "the replica's canary outcome"
        dead_gcs = gcs_keeper.process_in_group(cluster.head_group)
        assert dead_gcs is not None

        with SteadyLoad(url) as load:
            wait_for(lambda: len(load.answers) >= 20, 60, "answers before the kill")
            os.kill(dead_gcs, signal.SIGKILL)
            killed_at = time.monotonic()

            def restarted() -> bool:
                gcs = gcs_keeper.process_in_group(cluster.head_group)
                return gcs not in (None, dead_gcs)

            wait_for(restarted, OUTAGE_S + 60, "the keeper to restart the GCS")
            restarted_at = time.monotonic()
            after = cli_status(address, "token")  # answers once the GCS has its state back
            status_s = time.monotonic() - restarted_at
            time.sleep(2)

        print(
            f"GCS killed with Redis: {len(load.answers)} requests, "
            f"{len(load.answers) - len(load.wrong())} answered right; restarted after "
            f"{restarted_at - killed_at:.1f} s; `embedserve status` answered {status_s:.1f} s "
            "after the restart"
        )

        assert restarted_at - killed_at >= OUTAGE_S
        during = [a for a in load.answers if killed_at < a.sent_at < restarted_at]
        # Sent one after another through the whole outage (how many depends on the load).
        assert len(during) >= 10, f"{len(during)} requests while the GCS was dead"
        assert max(a.sent_at for a in during) > restarted_at - 2, "the last seconds too"
        assert load.wrong() == [], f"{len(load.wrong())} of {len(load.answers)} went wrong"
        (app,) = [a for a in after.applications if a.name == APP_NAME]
        assert app.status == "RUNNING"
        assert {d.status for d in app.deployments} == {"HEALTHY"}
        assert replica_ids(after) == replica_ids(before), "the same replicas, none restarted"
        assert after.canaries.keys() == before.canaries.keys()
        assert {c.outcome for c in after.canaries.values()} <= {"recorded", "passed"}
        assert canary_references(address) == references


def test_stop_forgets_the_address_ray_recorded_for_its_head() -> None:
    """Ray gives a head started with --node-ip-address=127.0.0.1 the machine's address and
    records that one: `stop` must remove that record, not only a 127.0.0.1 one."""
    with local_sh_cluster() as cluster:
        recorded = cluster.ray_address_file.read_text().strip()
        assert recorded == cluster.address
        group = cluster.head_group

        stopped = cluster.script("stop")

        assert stopped.returncode == 0, stopped.stderr
        assert not cluster.ray_address_file.exists(), f"{recorded} is still recorded"
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)


@pytest.mark.skipif(
    os.environ.get("EMBEDSERVE_MEASURE_GCS_LOSS") != "1",
    reason="a measurement of about 2 minutes: EMBEDSERVE_MEASURE_GCS_LOSS=1 runs it",
)
def test_without_redis_serving_ends_when_the_raylet_gives_up_on_the_gcs(tmp_path: Path) -> None:
    """Without GCS fault tolerance the head's raylet waits
    RAY_gcs_rpc_server_reconnect_timeout_s (60 s) for a dead GCS, then exits, and the
    replicas with it: serving survives that long and no longer."""
    with bare_head() as head:
        url = deploy(head, tmp_path)
        gcs = gcs_keeper.process_in_group(head.head_group)
        raylet = gcs_keeper.process_in_group(head.head_group, "raylet")
        assert gcs is not None and raylet is not None
        with SteadyLoad(url, interval_s=0.1) as load:
            wait_for(lambda: len(load.answers) >= 20, 60, "answers before the kill")
            os.kill(gcs, signal.SIGKILL)
            killed_at = time.monotonic()

            def raylet_gone() -> bool:
                return gcs_keeper.process_in_group(head.head_group, "raylet") != raylet

            raylet_exit_s = wait_for(raylet_gone, 180, "the raylet to exit")
            time.sleep(5)

    after = [a for a in load.answers if a.sent_at > killed_at]
    last_right_s = max(a.sent_at for a in after if a.right_vector) - killed_at
    first_wrong_s = min(a.sent_at for a in after if not a.right_vector) - killed_at
    print(
        f"GCS killed without Redis: raylet exited after {raylet_exit_s:.1f} s; "
        f"{sum(a.right_vector for a in after)} of {len(after)} requests after the kill "
        f"answered right; the last right one sent at {last_right_s:.1f} s, the first "
        f"failure at {first_wrong_s:.1f} s"
    )
    assert 55 < raylet_exit_s < 120
    assert 50 < last_right_s <= first_wrong_s
