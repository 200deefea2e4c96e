"""`embedserve serve`, the command behind `make run`: it starts its own local Ray,
prints the API and dashboard URLs, serves, and shuts down cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.conftest import free_port, hash_backend

CONFIG = {"backends": {"hash": hash_backend()}, "models": {"hash": {"chain": ["hash"]}}}


def wait_for_ready(url: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "embedserve serve exited early"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} was not ready after {timeout_s}s")


def test_serve_prints_urls_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w+")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "embedserve.cli", "serve", "--config", str(config)]
    process = subprocess.Popen(
        [*command, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        wait_for_ready(url, process)
        body = httpx.post(f"{url}/v1/embeddings", json={"model": "hash", "input": "hi"}).json()
        assert body["backend"] == "hash"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
    log.seek(0)
    output = log.read()
    assert f"API:       {url}/v1/embeddings" in output
    assert "dashboard: http://" in output
    assert "shutting down" in output
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=2)
