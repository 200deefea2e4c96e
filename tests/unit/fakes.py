"""In-process stand-ins for backend deployments, and helpers to build and call the
router's HTTP app without Ray.

Each handle runs a real backend (the hash backend) and answers exactly as
`BackendDeployment.embed` / `.describe` do; variants raise, answer NaN, sleep past the
link's timeout, describe themselves unavailable, report a full queue
(`BackPressureError`) or lose their replica (`ActorDiedError`), as Ray Serve would.
"""

from __future__ import annotations

import asyncio
import random
import types
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError

import embedserve.auth
from embedserve import BackendCapabilities, BackendUnavailable, EmbedInput, space_id
from embedserve.config import BatchingConfig
from embedserve.deployments.http import create_http_app
from embedserve.deployments.router import EmbeddingRouter
from embedserve.fallback import BackendAnswer
from embedserve.plugins.hash_backend import HashBackend
from embedserve.tracing import continued_span

A = {"kind": "hash", "options": {"dimensions": 64}}
B = {"kind": "hash", "options": {"dimensions": 32, "seed": 1}}
SPACE_A = space_id(HashBackend(A["options"]).space_identity())
SPACE_B = space_id(HashBackend(B["options"]).space_identity())
TEXTS = ["The quick brown fox", "jumps over the lazy dog", "vector spaces, again"]


class _Method:
    """`handle.method.remote(...)` returning an awaitable, like a DeploymentHandle."""

    def __init__(self, function: Callable[..., Coroutine[Any, Any, Any]]) -> None:
        self._function = function

    def remote(self, *args: Any) -> Coroutine[Any, Any, Any]:
        return self._function(*args)


class BackendHandle:
    """An in-process stand-in for a handle to `BackendDeployment`, running a real backend."""

    backend_class: type[HashBackend] = HashBackend
    unavailable: str | None = None  # why `load` raised BackendUnavailable
    silent = False  # `describe` fails, as when no replica answers

    def __init__(self, name: str, backend_config: dict[str, Any]) -> None:
        self.name = name
        self.backend = self.backend_class(backend_config["options"])
        self.backend.load()
        # What a replica reports: the configured limits with `auto` resolved.
        batching = BatchingConfig.model_validate(backend_config.get("batching", {}))
        self.batching = batching.resolved(self.backend.token_budget(0))
        self.calls = 0
        self.received_counts: list[list[int] | None] = []  # what the router passed on
        self.embed = _Method(self._embed)
        self.describe = _Method(self._describe)

    async def _embed(
        self,
        inputs: Sequence[EmbedInput],
        trace_context: dict[str, str] | None = None,
        token_counts: Sequence[int] | None = None,
    ) -> BackendAnswer:
        self.calls += 1
        self.received_counts.append(None if token_counts is None else list(token_counts))
        # Continues the router's trace from the carrier, as BackendDeployment.embed does.
        with continued_span("replica.embed", trace_context, {"embedserve.backend": self.name}):
            if self.unavailable is not None:
                raise BackendUnavailable(f"backend {self.name} is unavailable: {self.unavailable}")
            if token_counts is None:  # the router did not count with this tokenizer
                token_counts = self.backend.count_tokens(inputs)
            batch = self.backend.embed_batch(inputs)
            answer = BackendAnswer(
                batch.dense, token_counts, sparse=batch.sparse, multivector=batch.multivector
            )
            return self.answer(answer)

    def answer(self, answer: BackendAnswer) -> BackendAnswer:
        """What the replica returns for the backend's real answer (variants change it)."""
        return answer

    async def _describe(self) -> dict[str, Any]:
        if self.silent:
            raise RuntimeError("replica is gone")
        return {
            "backend": self.name,
            "replica": f"{self.name}#0",
            "kind": self.backend.kind,
            "space_id": space_id(self.backend.space_identity()),
            "available": self.unavailable is None,
            "reason": self.unavailable,
            "capabilities": self.backend.capabilities.model_dump(mode="json"),
            "batching": self.batching.model_dump(mode="json"),
        }


class RaisingHandle(BackendHandle):
    """A replica whose batch fails (say, out of GPU memory)."""

    def answer(self, answer: BackendAnswer) -> BackendAnswer:
        raise RuntimeError("CUDA error: out of memory")


class NaNHandle(BackendHandle):
    """A replica whose model answers NaN (a broken fp16 kernel, for one)."""

    def answer(self, answer: BackendAnswer) -> BackendAnswer:
        return BackendAnswer(np.full_like(answer.dense, np.nan), answer.token_counts)


class SlowHandle(BackendHandle):
    """A replica that answers long after the link's timeout."""

    async def _embed(self, *call: Any) -> BackendAnswer:
        await asyncio.sleep(30)
        return await super()._embed(*call)


class UnavailableHandle(BackendHandle):
    """A replica whose backend raised BackendUnavailable in `load`."""

    unavailable = "the optional extra is not installed"


class SilentHandle(BackendHandle):
    """A replica that does not answer `describe`."""

    silent = True


class MatryoshkaHash(HashBackend):
    """The hash backend declaring Matryoshka sizes, to exercise the truncation path."""

    @property
    def capabilities(self) -> BackendCapabilities:
        return super().capabilities.model_copy(update={"matryoshka_dimensions": (16, 32)})


class MatryoshkaHandle(BackendHandle):
    backend_class = MatryoshkaHash


def make_config(
    backends: dict[str, dict[str, Any]],
    models: dict[str, dict[str, Any]],
    **server: Any,
) -> dict[str, Any]:
    return {"server": server, "backends": backends, "models": models}


def make_router(
    config: dict[str, Any], handle_types: dict[str, type[BackendHandle]] | None = None
) -> tuple[EmbeddingRouter, dict[str, BackendHandle]]:
    handle_types = handle_types or {}
    handles = {
        name: handle_types.get(name, BackendHandle)(name, backend)
        for name, backend in config["backends"].items()
    }
    return EmbeddingRouter(config, handles), handles


def make_app(
    config: dict[str, Any], handle_types: dict[str, type[BackendHandle]] | None = None
) -> tuple[FastAPI, dict[str, BackendHandle]]:
    router, handles = make_router(config, handle_types)
    return create_http_app(router), handles


def call(app: FastAPI, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


def embed(app: FastAPI, **body: Any) -> httpx.Response:
    return call(app, "POST", "/v1/embeddings", json=body)


def hash_vectors(options: dict[str, Any], texts: list[str]) -> np.ndarray:
    return HashBackend(options).embed_batch([EmbedInput(t) for t in texts]).dense


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert error["message"]
    assert error["param"] == param
    return error


class OverloadedHandle(BackendHandle):
    """A deployment whose request queue is full: Ray Serve refuses the call at once."""

    async def _embed(self, *call: Any) -> BackendAnswer:
        self.calls += 1
        raise BackPressureError(num_queued_requests=8, max_queued_requests=8)


class DyingReplicaHandle(BackendHandle):
    """A deployment whose replica dies mid-request on its first `deaths` calls."""

    deaths = 1

    async def _embed(self, *call: Any) -> BackendAnswer:
        if self.calls < self.deaths:
            self.calls += 1
            raise self.lost_replica()
        return await super()._embed(*call)

    def lost_replica(self) -> Exception:
        """What the handle raises when the replica dies (variants: unreachable)."""
        return ActorDiedError()


class TwiceDyingReplicaHandle(DyingReplicaHandle):
    """A deployment whose replica dies, and whose retry's replica dies too."""

    deaths = 2


class MiniLMShapedHandle(BackendHandle):
    """A handle for a `sentence-transformers` backend that answers 384-dimensional hash
    vectors: the router validates with the real tokenizer, no weights are loaded."""

    def __init__(self, name: str, backend_config: dict[str, Any]) -> None:
        super().__init__(name, {"options": {"dimensions": 384}})


class FakeClock:
    """`time.monotonic` of `embedserve.auth` (the rate limiter's clock), moved by hand.

    It starts far ahead of the real clock: a new bucket takes its creation time from the
    real `time.monotonic` (a dataclass default), which must not lie in the fake future.
    """

    def __init__(self) -> None:
        self.now = 1e9

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
        """Make the rate limiter read this clock (only it: asyncio keeps the real one)."""
        clock = types.SimpleNamespace(monotonic=self.monotonic)
        monkeypatch.setattr(embedserve.auth, "time", clock)
        return self


# Arbitrary JSON-like request bodies, for the tests that nothing but a client error comes
# of them (a seeded stand-in for hypothesis, which is not installed here).
REQUEST_FIELDS = ["input", "model", "dimensions", "encoding_format", "user", "input_type"]
_STRINGS = ["", " ", "hello", "\ud800", "\x00", "é", "🦓", "float", "base64", "query", "mini"]


def json_like_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON-like value: scalars (NaN and huge numbers too), lists and objects."""
    kinds = ["null", "bool", "int", "float", "str"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -1, 64, 2**31, 2**64, rng.randint(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.0, 1.5, -2.25, float("nan"), float("inf"), 1e308])
    if kind == "str":
        return rng.choice(_STRINGS) * rng.randint(0, 3)
    if kind == "list":
        return [json_like_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = rng.sample([*REQUEST_FIELDS, "truncate", "extra", ""], rng.randint(0, 3))
    return {key: json_like_value(rng, depth + 1) for key in keys}


def request_body_like(rng: random.Random, model: str = "mini") -> Any:
    """A random body for `POST /v1/embeddings`: mostly near-valid, sometimes not an object."""
    if rng.random() < 0.1:
        return json_like_value(rng)
    body: dict[str, Any] = {"model": model, "input": json_like_value(rng)}
    if rng.random() < 0.3:
        body["input"] = [rng.choice(_STRINGS) for _ in range(rng.randint(0, 4))]
    for name in rng.sample([*REQUEST_FIELDS, "truncate"], rng.randint(0, 4)):
        body[name] = json_like_value(rng)
    if rng.random() < 0.1:
        body[rng.choice(["temperature", "extra", ""])] = json_like_value(rng)
    return body
