"""`embedserve.client.local()`: reuses a server that answers, else starts `embedserve
serve` on a free port, and leaves nothing of what it started running after exit."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import yaml

from embedserve.client import local
from tests.integration.conftest import free_port, hash_backend

pytestmark = pytest.mark.integration

HASH_ONLY = {
    "backends": {"hash": hash_backend(dimensions=16)},
    "models": {"hash": {"chain": ["hash"]}},
}


def started_servers() -> list[psutil.Process]:
    """`embedserve serve` processes this test process started."""
    return [
        child
        for child in psutil.Process().children()
        if "embedserve.cli.main" in " ".join(child.cmdline()) and "serve" in child.cmdline()
    ]


def test_local_starts_a_server_when_none_answers_and_stops_all_of_it(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    port = free_port()  # nothing answers there
    config.write_text(yaml.safe_dump({**HASH_ONLY, "server": {"port": port}}))
    messages: list[str] = []
    with local(config, model="hash", progress=messages.append) as client:
        (server,) = started_servers()
        tree = [server, *server.children(recursive=True)]
        assert len(tree) > 3, "the server runs its own Ray: GCS, raylet, workers"
        result = client.embed_text(["hello", "world"])
        assert result.vectors.shape == (2, 16) and result.backend == "hash"
        assert client.base_url.startswith("http://127.0.0.1:")
    assert any("starting a server on port" in m for m in messages)
    assert any("ready at" in m for m in messages)
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"left running: {[p.cmdline()[:3] for p in alive]}"


def test_local_reuses_a_server_that_answers(deploy) -> None:
    url = deploy(HASH_ONLY)
    messages: list[str] = []
    before = {child.pid for child in psutil.Process().children()}
    started = time.monotonic()
    with local(url=url, model="hash", progress=messages.append) as client:
        vectors = client.embed_text(["hello"]).vectors
        assert {child.pid for child in psutil.Process().children()} == before
    assert time.monotonic() - started < 30
    assert messages[0] == f"embedserve: using the server at {url}"
    assert np.isfinite(vectors).all()
    assert httpx.get(f"{url}/healthz").status_code == 200, "the reused server keeps running"
