"""In-process stand-ins for backend deployments, and helpers to build and call the
router's HTTP app without Ray.

Each handle runs a real backend (the hash backend) and answers exactly as
`BackendDeployment.embed` / `.describe` do; variants raise, answer NaN, sleep past the
link's timeout, fail to load (they refuse, and describe why), report a full queue
(`BackPressureError`) or lose their replica (`ActorDiedError`), as Ray Serve would.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError

import embedserve.serving.auth
from embedserve import BackendCapabilities, EmbedInput, space_id
from embedserve.backend import BackendAnswer
from embedserve.config import BatchingConfig
from embedserve.deployments.backend_loading import LoadFailure
from embedserve.deployments.http import create_http_app
from embedserve.deployments.replica_description import ReplicaDescription
from embedserve.deployments.router import EmbeddingRouter
from embedserve.plugins.hash_backend import HashBackend
from embedserve.runtime.tracing import continued_span
from embedserve.serving.fallback import Refusal

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
    unavailable: str | None = None  # why `load` raised
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
    ) -> BackendAnswer | Refusal:
        self.calls += 1
        self.received_counts.append(None if token_counts is None else list(token_counts))
        # Continues the router's trace from the carrier, as BackendDeployment.embed does.
        with continued_span("replica.embed", trace_context, {"embedserve.backend": self.name}):
            if self.unavailable is not None:
                return Refusal(f"backend {self.name} did not load: {self.unavailable}")
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

    def load_failure(self) -> LoadFailure | None:
        """What `describe` says of a failed load, as the replica does."""
        if self.unavailable is None:
            return None
        log = f"/tmp/ray/logs/serve/replica_embedserve_{self.name}_0.log"
        return LoadFailure(self.unavailable, log, attempts=1, next_attempt_at=0.0)

    async def _describe(self) -> ReplicaDescription:
        if self.silent:
            raise RuntimeError("replica is gone")
        return ReplicaDescription(
            backend=self.name,
            replica=f"{self.name}#0",
            kind=self.backend.kind,
            space_id=space_id(self.backend.space_identity()),
            available=self.unavailable is None,
            reason=self.unavailable,
            load_failure=self.load_failure(),
            capabilities=self.backend.capabilities,
            batching=self.batching,
        )


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
    """A replica whose backend's `load` raised: it refuses every request."""

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
    """`time.monotonic` of `embedserve.serving.auth` (the rate limiter's clock), moved by hand.

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
        monkeypatch.setattr(embedserve.serving.auth, "time", clock)
        return self
