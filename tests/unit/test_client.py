"""The Python client's protocol against a real local HTTP server that scripts the answers
the served app gives (limits, 413, 429/503 with Retry-After, errors, a fallback's space).

The served app itself is the client's counterpart in tests/integration/test_client.py.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from PIL import Image

import embedserve.client
from embedserve import InputType
from embedserve.client import (
    AsyncEmbedClient,
    AuthenticationError,
    BadRequestError,
    EmbedClient,
    ModelNotFoundError,
    RateLimitError,
    RequestTooLargeError,
    ServiceUnavailableError,
    SpaceGuard,
    SpaceMismatch,
)
from embedserve.retry import retry_after_seconds

DIMENSIONS = 8


def text_vector(text: str) -> list[float]:
    """A deterministic vector per text, so order mistakes show."""
    rng = np.random.default_rng(abs(hash(text)) % 2**32)
    return rng.standard_normal(DIMENSIONS).astype(np.float32).tolist()


def b64(vector: list[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


@dataclass
class Script:
    """What the fake server does: its limits, queued failures, the space per request."""

    max_inputs: int = 3
    max_items_per_body: int | None = None  # more items than this: 413
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    spaces: list[str] = field(default_factory=list)  # space of each embedding request
    requests: list[tuple[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


def envelope(status: int, code: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": f"scripted {status}",
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }


class Handler(BaseHTTPRequestHandler):
    script: Script

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            card = {
                "id": "m",
                "space_id": "space-a",
                "dimensions": DIMENSIONS,
                "allow_cross_space": True,
                "chain": [
                    {
                        "name": "b",
                        "kind": "hash",
                        "space_id": "space-a",
                        "dimensions": DIMENSIONS,
                        "matryoshka_dimensions": [],
                        "max_input_tokens": 77,
                        "modalities": ["text", "image"],
                        "outputs": ["dense", "sparse"],
                        "normalized": False,
                        "semantic": False,
                    }
                ],
                "max_inputs_per_request": self.script.max_inputs,
            }
            self._send(200, {"object": "list", "data": [card]})
        elif self.path == "/healthz":
            self._send(200, {"status": "ok"})
        else:
            self._send(503, {"status": "not ready", "serving_backends": {"m": []}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        script = self.script
        script.requests.append((self.path, body))
        script.times.append(time.monotonic())
        if body.get("model") != "m":
            self._send(404, envelope(404, "model_not_found", "model"))
            return
        if script.failures:
            status, headers = script.failures.pop(0)
            self._send(status, envelope(status, f"scripted_{status}"), headers)
            return
        items = body["input"] if self.path == "/v1/embeddings" else body["items"]
        if len(items) > script.max_inputs or (
            script.max_items_per_body and len(items) > script.max_items_per_body
        ):
            self._send(413, envelope(413, "too_many_inputs", "input"))
            return
        space = script.spaces.pop(0) if script.spaces else "space-a"
        self._send(200, self._answer(items, body.get("outputs", []), space))

    def _answer(self, items: list[Any], outputs: list[str], space: str) -> dict[str, Any]:
        keys = [
            item if isinstance(item, str) else item.get("text", item.get("image")) for item in items
        ]
        if self.path == "/v1/embeddings":
            data = [{"index": i, "embedding": b64(text_vector(k))} for i, k in enumerate(keys)]
        elif "sparse" in outputs:
            data = [
                {"index": i, "sparse": {"indices": [i, 7], "values": [0.5, len(k)]}}
                for i, k in enumerate(keys)
            ]
        else:
            data = [{"index": i, "dense": b64(text_vector(k))} for i, k in enumerate(keys)]
        data.reverse()  # the client orders by `index`, not by position
        return {
            "object": "list",
            "data": data,
            "model": "m",
            "backend": "b" if space == "space-a" else "fallback",
            "space_id": space,
            "dimensions": DIMENSIONS,
            "normalized": False,
            "semantic": False,
            "fallback": space != "space-a",
            "usage": {"prompt_tokens": 2 * len(items), "total_tokens": 2 * len(items)},
        }


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()
    handler = type("ScriptedHandler", (Handler,), {"script": script})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()
    httpd.server_close()


def test_long_inputs_split_within_the_model_limit_and_come_back_in_order(server) -> None:
    url, script = server
    texts = [f"text {i}" for i in range(10)]
    with EmbedClient(url + "/v1/", model="m") as client:
        result = client.embed_text(texts)
    sizes = [len(body["input"]) for path, body in script.requests if path == "/v1/embeddings"]
    assert sizes == [3, 3, 3, 1]
    np.testing.assert_array_equal(result.vectors, np.array([text_vector(t) for t in texts]))
    assert result.vectors.dtype == np.float32
    assert (result.space_id, result.backend, result.dimensions) == ("space-a", "b", DIMENSIONS)
    assert result.usage.prompt_tokens == 20 and not result.fallback


def test_a_413_halves_the_request_down_to_one_item(server) -> None:
    url, script = server
    script.max_items_per_body = 1
    with EmbedClient(url, model="m") as client:
        result = client.embed_text(["a", "b", "c", "d"])
        np.testing.assert_array_equal(result.vectors, [text_vector(t) for t in "abcd"])
        script.failures = [(413, {})]
        with pytest.raises(RequestTooLargeError) as error:
            client.embed_text("one item")
    assert error.value.code == "scripted_413" and error.value.status_code == 413


def test_429_and_503_are_retried_after_the_servers_retry_after(server) -> None:
    url, script = server
    script.failures = [(429, {"Retry-After": "1"}), (503, {"Retry-After": "0.5"})]
    with EmbedClient(url, model="m") as client:
        result = client.embed_text(["x"])
    gaps = np.diff(script.times)
    assert len(script.times) == 3
    assert gaps[0] >= 1.0 and gaps[1] >= 0.5
    np.testing.assert_array_equal(result.vectors[0], text_vector("x"))


def test_a_wait_past_the_retry_budget_raises_at_once(server) -> None:
    url, script = server
    script.failures = [(503, {"Retry-After": "30"})]
    started = time.monotonic()
    with (
        EmbedClient(url, model="m", retry_total_s=5) as client,
        pytest.raises(ServiceUnavailableError) as error,
    ):
        client.embed_text(["x"])
    assert time.monotonic() - started < 3
    assert error.value.retry_after_s == 30 and error.value.code == "scripted_503"
    script.failures = [(429, {"Retry-After": "0.2"})] * 50
    with EmbedClient(url, model="m", retry_total_s=0.5) as client, pytest.raises(RateLimitError):
        client.embed_text(["x"])


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(400, BadRequestError), (401, AuthenticationError), (422, BadRequestError)],
)
def test_errors_are_typed_and_carry_the_servers_code(server, status, error_type) -> None:
    url, script = server
    script.failures = [(status, {})]
    with EmbedClient(url, model="m") as client, pytest.raises(error_type) as error:
        client.embed_text(["x"])
    assert error.value.status_code == status and error.value.code == f"scripted_{status}"
    assert len(script.requests) == 1, "client errors are not retried"


def test_an_unknown_model_is_a_404_with_its_code(server) -> None:
    url, _ = server
    with EmbedClient(url) as client:
        with pytest.raises(ModelNotFoundError) as error:
            client.embed_text(["x"], model="nope")
        assert error.value.code == "model_not_found" and error.value.param == "model"
        with pytest.raises(ModelNotFoundError):
            client.dimension("nope")
        with pytest.raises(ValueError, match="no model"):
            client.embed_text(["x"])


def test_parts_served_by_two_spaces_are_refused_not_mixed(server) -> None:
    url, script = server
    script.spaces = ["space-a", "space-b"]
    with EmbedClient(url, model="m") as client, pytest.raises(SpaceMismatch, match="2 spaces"):
        client.embed_text(["1", "2", "3", "4"])


def test_registry_calls_read_the_servers_model_card(server) -> None:
    url, _ = server
    with EmbedClient(url, model="m") as client:
        assert client.dimension() == DIMENSIONS
        assert client.max_tokens() == 77
        (card,) = client.models()
        assert card.id == "m" and card.chain[0].space_id == "space-a"
        health = client.health()
    assert health.live and not health.ready and health.serving_backends == {"m": []}


def test_images_of_every_kind_reach_the_server_as_the_same_pixels(server, tmp_path) -> None:
    url, script = server
    pixels = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path = tmp_path / "x.png"
    path.write_bytes(buffer.getvalue())
    with EmbedClient(url, model="m") as client:
        result = client.embed_image([path, str(path), buffer.getvalue(), image, pixels])
    assert len(result) == 5
    sent = [item["image"] for path_, body in script.requests for item in body.get("items", [])]
    for encoded in sent:
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))))
        np.testing.assert_array_equal(decoded, pixels)
    with pytest.raises(TypeError, match="an image must be"):
        EmbedClient(url, model="m").embed_image(3.5)


def test_sparse_vectors_keep_their_order(server) -> None:
    url, _ = server
    with EmbedClient(url, model="m") as client:
        result = client.embed_sparse(["aa", "b", "cccc", "dd"])
    assert [v.values[1] for v in result.vectors] == [2, 1, 4, 2]
    assert all(v.indices.dtype == np.int64 for v in result.vectors)


@pytest.mark.parametrize("input_type", [InputType.QUERY, "query"])
def test_the_input_type_goes_as_its_value(server, input_type) -> None:
    url, script = server
    with EmbedClient(url, model="m") as client:
        client.embed_text(["x"], input_type=input_type)
        client.embed_sparse(["x"], input_type=input_type)
    assert [body["input_type"] for _, body in script.requests] == ["query", "query"]


def test_the_async_client_speaks_the_same_protocol(server) -> None:
    url, script = server
    script.failures = [(503, {"Retry-After": "0.2"})]
    texts = [f"t{i}" for i in range(7)]

    async def run() -> Any:
        async with AsyncEmbedClient(url, model="m") as client:
            return await client.embed_text(texts), await client.dimension()

    result, dimension = asyncio.run(run())
    np.testing.assert_array_equal(result.vectors, [text_vector(t) for t in texts])
    assert dimension == DIMENSIONS
    assert [len(b["input"]) for p, b in script.requests] == [3, 3, 3, 1]


def test_the_guard_refuses_another_space_and_accepts_its_own() -> None:
    guard = SpaceGuard("space-a")
    guard.check("space-a")
    with pytest.raises(SpaceMismatch, match="space-b cannot go into an index of space space-a"):
        guard.check("space-b")
    SpaceGuard("space-a", allow_cross_space=True).check("space-b")


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("2", 2.0), ("0.25", 0.25), ("-3", 0.0), (None, None), ("soon", None)],
)
def test_retry_after_values(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


def test_retry_after_as_an_http_date() -> None:
    from email.utils import formatdate

    assert 3 <= retry_after_seconds(formatdate(time.time() + 5, usegmt=True)) <= 5


@pytest.mark.parametrize(
    "module", ["_clients", "_errors", "_flow", "_images", "_local", "_results"]
)
def test_the_client_modules_docstrings_name_what_exists(module: str) -> None:
    # `_flow` named drivers (`drive`, `drive_async`) that did not exist.
    namespace = importlib.import_module(f"embedserve.client.{module}")
    for name in re.findall(r"`([A-Za-z_][\w.]*)(?:\(\))?`", namespace.__doc__ or ""):
        first, *rest = name.split(".")
        target = getattr(namespace, first, None) or getattr(embedserve.client, first, None)
        assert target is not None, f"{module} names `{name}`, which does not exist"
        for attribute in rest:
            assert hasattr(target, attribute), f"{module} names `{name}`, which does not exist"
            target = getattr(target, attribute)
