"""`embedserve serve`, the command behind `make run`: it starts its own local Ray, prints
what a user needs and little else, refuses a port another server holds, serves, and shuts
down cleanly on Ctrl-C.

One server (a hash-only config) serves the module; the last test stops it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from embedserve import __version__
from tests.integration.conftest import free_port, hash_backend

pytestmark = pytest.mark.integration

CONFIG = {"backends": {"hash": hash_backend()}, "models": {"hash": {"chain": ["hash"]}}}
# What a user needs up to "ready": the deploy line and the banner (URLs, ingress,
# dashboard, one line per backend, the CLI, the logs); Ray's own INFO lines were ~30 more.
MAX_LINES_TO_READY = 12


@dataclass
class Served:
    url: str
    port: int
    config: Path
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text()


def _serve_command(config: Path, port: int) -> list[str]:
    cli = [sys.executable, "-m", "embedserve.cli.main"]
    return [*cli, "serve", "--config", str(config), "--port", str(port)]


def _environment() -> dict[str, str]:
    """The test's environment as a new user's shell has it: no Ray address or auth mode
    chosen, and the venv not activated."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    scripts = sysconfig.get_path("scripts")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != scripts)
    return env


def _wait_for_banner(served: Served, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while "\n  logs:" not in served.output():
        assert served.process.poll() is None, f"embedserve serve exited:\n{served.output()}"
        assert time.monotonic() < deadline, f"no banner after {timeout_s}s:\n{served.output()}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(tmp_path_factory)


@pytest.fixture
def served_for_faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server of its own: a fault's warnings must not reach the console checked above."""
    yield from _serve(tmp_path_factory)


def _serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("serve")
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    port = free_port()
    log = folder / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            _serve_command(config, port), stdout=out, stderr=subprocess.STDOUT, env=_environment()
        )
    served = Served(f"http://127.0.0.1:{port}", port, config, process, log)
    try:
        _wait_for_banner(served)
        yield served
    finally:
        if process.poll() is None:  # Ctrl-C, so that its local Ray stops with it
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_serve_prints_what_a_user_needs_and_little_else(served: Served) -> None:
    lines = served.output().splitlines()
    url = served.url

    assert len(lines) <= MAX_LINES_TO_READY, "\n".join(lines)
    assert lines[0] == "deploying 1 backends, 1 models ..."
    assert lines[1] == f"embedserve {__version__} ready (Ctrl-C stops it)"
    assert f"  API:       {url}/v1/embeddings" in lines
    assert f"  models:    {url}/v1/models" in lines
    assert f"  docs:      {url}/docs" in lines
    backend = "  backend hash (hash): HEALTHY, 1 RUNNING, available"
    assert any(line.startswith(backend) for line in lines), "\n".join(lines)
    (cli,) = [line for line in lines if line.startswith("  CLI:")]
    assert cli.startswith(f"  CLI:       source {Path(sys.prefix, 'bin', 'activate')}; ")
    status = subprocess.run(
        ["bash", "-c", cli.removeprefix("  CLI:")],
        capture_output=True,
        text=True,
        timeout=120,
        env=_environment(),
    )
    assert status.returncode == 0, status.stderr
    address = cli.split("--address ", 1)[1].strip()
    assert status.stdout.splitlines()[0] == f"cluster {address} (from --address)"
    assert "application embedserve RUNNING" in status.stdout
    (logs,) = [line for line in lines if line.startswith("  logs:")]
    assert Path(logs.split()[1]).is_dir(), logs
    assert not [line for line in lines if " INFO " in line or "Traceback" in line]

    body = httpx.post(f"{url}/v1/embeddings", json={"model": "hash", "input": "hi"}).json()
    assert body["backend"] == "hash"


def test_the_router_answers_on_the_port_itself(served: Served) -> None:
    # Direct ingress: no proxy process between the client and the router.
    (listener,) = {c.pid for c in psutil.net_connections("tcp") if _listens(c, served.port)}
    assert "ServeReplica:embedserve:router" in " ".join(psutil.Process(listener).cmdline())
    (line,) = [line for line in served.output().splitlines() if line.startswith("  ingress:")]
    assert f"the router answers on port {served.port} itself" in line
    proxy_port = int(line.rstrip(")").split()[-1])
    (proxy,) = {c.pid for c in psutil.net_connections("tcp") if _listens(c, proxy_port)}
    assert "ProxyActor" in " ".join(psutil.Process(proxy).cmdline())
    # Both answer with the same app.
    for port in (served.port, proxy_port):
        body = {"model": "hash", "input": ["a", "b"]}
        response = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json=body, timeout=30)
        assert response.status_code == 200 and len(response.json()["data"]) == 2


def _listens(connection: Any, port: int) -> bool:
    return connection.status == psutil.CONN_LISTEN and connection.laddr.port == port


def test_the_dashboard_line_says_how_to_sign_in_when_ray_asks_for_a_token(served: Served) -> None:
    (line,) = [line for line in served.output().splitlines() if line.startswith("  dashboard:")]
    dashboard = line.split()[1]
    mode = httpx.get(f"{dashboard}/api/authentication_mode", timeout=10).json()
    # Ray 2.60 starts a local cluster with token authentication by default.
    assert mode == {"authentication_mode": "token"}
    assert "`ray get-auth-token`" in line and "~/.ray/auth_token" in line
    assert httpx.get(f"{dashboard}/api/version", timeout=10).status_code in (401, 403)


def test_a_second_serve_on_the_same_port_refuses_in_one_line(served: Served) -> None:
    # Serve's proxy binds with SO_REUSEPORT: a second one would start and split the traffic.
    started = time.monotonic()
    second = subprocess.run(
        _serve_command(served.config, served.port),
        capture_output=True,
        text=True,
        timeout=120,
        env=_environment(),
    )
    assert second.returncode == 2, second.stdout + second.stderr
    assert time.monotonic() - started < 30
    assert second.stdout == ""
    (line,) = second.stderr.splitlines()
    assert f"port {served.port}" in line and "--port" in line
    assert httpx.get(f"{served.url}/healthz", timeout=5).status_code == 200


def test_ctrl_c_stops_cleanly_and_quietly(served: Served) -> None:
    before = len(served.output().splitlines())
    started = time.monotonic()
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=120) == 0
    # A direct-ingress router drains for 30 s by default, for a load balancer in front;
    # `serve` has none and sets it to 0.
    assert time.monotonic() - started < 25

    lines = served.output().splitlines()
    assert lines[before:] == ["shutting down ..."], "\n".join(lines[before:])
    assert not [line for line in lines if "ERROR" in line or "Traceback" in line]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{served.url}/healthz", timeout=2)


def test_a_router_replica_lost_is_replaced_on_the_same_port(served_for_faults: Served) -> None:
    served = served_for_faults
    (router,) = {c.pid for c in psutil.net_connections("tcp") if _listens(c, served.port)}
    os.kill(router, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "the port was not served again within 120 s"
        try:
            body = {"model": "hash", "input": "back"}
            response = httpx.post(f"{served.url}/v1/embeddings", json=body, timeout=5)
            if response.status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    (replacement,) = {c.pid for c in psutil.net_connections("tcp") if _listens(c, served.port)}
    assert replacement != router
    assert "ServeReplica:embedserve:router" in " ".join(psutil.Process(replacement).cmdline())
