"""The `openai-compatible` backend against a real HTTP server in this process: request
splitting, the API key from its variable, `dimensions`, and the retry policy (429 with
Retry-After, 5xx then success, timeouts, no retry on 400)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from embedserve import BackendUnavailable, EmbedInput, space_id
from embedserve.plugins.hash_backend import HashBackend
from embedserve.plugins.openai_compatible_backend import OpenAICompatibleBackend, RemoteError

KEY_ENV = "TEST_REMOTE_EMBEDDINGS_KEY"
SECRET = "sk-test-0123456789-secret"


class Remote:
    """A scripted OpenAI-compatible server: each request takes the next scripted answer
    (`(status, headers)` or `("sleep", seconds)`), then answers with hash vectors."""

    def __init__(self) -> None:
        self.script: list[tuple[Any, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        remote = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                remote.requests.append({**body, "auth": self.headers.get("Authorization")})
                remote.times.append(time.monotonic())
                status, extra = remote.script.pop(0) if remote.script else (200, {})
                if status == "sleep":
                    time.sleep(extra)
                    status, extra = 200, {}
                if status != 200:
                    error = {"error": {"message": "nope", "type": "x", "code": f"c{status}"}}
                    return self._send(status, error, extra)
                dims = body.get("dimensions", 32)
                vectors = HashBackend({"dimensions": dims}).embed_batch(
                    [EmbedInput(text) for text in body["input"]]
                )
                data = [
                    {"object": "embedding", "index": i, "embedding": v.tolist()}
                    for i, v in enumerate(vectors.dense)
                ][::-1]  # out of order on purpose: the index decides
                self._send(200, {"object": "list", "data": data, "model": body["model"]}, {})

            def _send(self, status: int, body: dict, headers: dict[str, str]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


@pytest.fixture
def remote() -> Iterator[Remote]:
    server = Remote()
    yield server
    server.server.shutdown()


def backend(remote: Remote, **options: Any) -> OpenAICompatibleBackend:
    defaults = {"base_url": remote.url, "model": "remote-model", "backoff_s": 0.01}
    instance = OpenAICompatibleBackend({**defaults, **options})
    instance.load()
    return instance


def texts(n: int) -> list[EmbedInput]:
    return [EmbedInput(f"text number {i}") for i in range(n)]


def test_requests_are_split_to_the_remote_batch_size_in_order(remote: Remote) -> None:
    instance = backend(remote, max_batch_size=2)
    assert instance.capabilities.dimensions == 32  # learnt from a probe at load
    remote.requests.clear()
    dense = instance.embed_batch(texts(5)).dense
    assert [len(r["input"]) for r in remote.requests] == [2, 2, 1]
    expected = HashBackend({"dimensions": 32}).embed_batch(texts(5)).dense
    assert np.allclose(dense, expected)


def test_the_key_comes_from_its_variable_and_never_shows(
    remote: Remote, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    instance = backend(remote, api_key_env=KEY_ENV, dimensions=16)
    remote.script = [(400, {})]
    with pytest.raises(RemoteError) as raised:
        instance.embed_batch(texts(1))
    assert {r["auth"] for r in remote.requests} == {f"Bearer {SECRET}"}
    assert SECRET not in str(raised.value) and SECRET not in caplog.text
    assert SECRET not in json.dumps(instance.space_identity())


def test_a_missing_key_variable_makes_the_backend_unavailable(
    remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(BackendUnavailable, match=KEY_ENV):
        backend(remote, api_key_env=KEY_ENV)


def test_dimensions_pass_through(remote: Remote) -> None:
    instance = backend(remote, dimensions=16)
    assert instance.embed_batch(texts(2)).dense.shape == (2, 16)
    assert {r["dimensions"] for r in remote.requests} == {16}


def test_429_waits_as_long_as_retry_after_says(remote: Remote) -> None:
    instance = backend(remote, dimensions=32)
    remote.script = [(429, {"Retry-After": "1"})]
    instance.embed_batch(texts(1))
    assert len(remote.requests) == 2
    assert remote.times[1] - remote.times[0] >= 0.95


def test_a_500_then_success_is_retried(remote: Remote) -> None:
    instance = backend(remote, dimensions=32)
    remote.script = [(500, {}), (503, {})]
    assert instance.embed_batch(texts(3)).dense.shape == (3, 32)
    assert len(remote.requests) == 3


def test_a_400_is_not_retried(remote: Remote) -> None:
    instance = backend(remote, dimensions=32)
    remote.script = [(400, {})]
    with pytest.raises(RemoteError, match="400 c400"):
        instance.embed_batch(texts(1))
    assert len(remote.requests) == 1


def test_timeouts_are_retried_then_reported(remote: Remote) -> None:
    instance = backend(remote, dimensions=32, timeout_s=0.3, max_retries=1)
    remote.script = [("sleep", 1.0), ("sleep", 1.0)]
    started = time.monotonic()
    with pytest.raises(RemoteError, match=r"timed out after 0\.3s; gave up after 2 attempts"):
        instance.embed_batch(texts(1))
    assert time.monotonic() - started < 2.0
    remote.script = [("sleep", 1.0)]
    retried = backend(remote, dimensions=32, timeout_s=0.3, max_retries=2)
    assert retried.embed_batch(texts(1)).dense.shape == (1, 32)


def test_space_id_is_the_remote_model_and_revision(remote: Remote) -> None:
    def space(**options: Any) -> str:
        merged = {"base_url": remote.url, "model": "m", **options}
        return space_id(OpenAICompatibleBackend(merged).space_identity())

    assert space(revision="2024-01") == space(revision="2024-01", base_url="http://other/v1")
    assert space(revision="2024-01") != space(revision="2024-06")
    assert space() != space(model="n")
