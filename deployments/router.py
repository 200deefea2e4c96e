"""The router deployment: the HTTP ingress of embedserve.

It validates requests, resolves a public model name to its fallback chain, calls backend
deployments through their handles, and stamps every answer with the model, backend,
vector space and dimension metadata (JSON fields and `X-Embedding-*` headers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments.http import create_http_app
from deployments.metrics import RouterMetrics
from serve_app import EmbedInput
from serve_app.auth import ApiKey, KeyStore, RateLimiter, load_keys
from serve_app.backend import BackendCapabilities
from serve_app.config import EmbedServeConfig, parse_config
from serve_app.errors import (
    AllBackendsFailed,
    BackendsTimedOut,
    EmbedServeError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    RequestTimedOut,
)
from serve_app.fallback import (
    BackendAnswer,
    BackendOverloaded,
    ChainExhausted,
    ChainLink,
    FailureKind,
    Served,
    serve_with_fallback,
)
from serve_app.schemas import (
    BackendInfo,
    EmbeddingMetadata,
    EmbeddingsRequest,
    ModelCard,
    ModelList,
    Usage,
)
from serve_app.space import truncated_space_id
from serve_app.tracing import current_context_carrier, setup_tracing, tracer
from serve_app.validation import check_token_limits, request_texts
from serve_app.vectors import encode_base64, truncate

logger = logging.getLogger("ray.serve")

DESCRIBE_TIMEOUT_S = 5.0


# A replica that died or became unreachable while holding a request.
REPLICA_LOST = (RayActorError, ReplicaUnavailableError)


def describe_backend_error(exc: BaseException) -> str:
    """A one-line reason from a backend's exception, unwrapping Ray's task error."""
    if isinstance(exc, RayTaskError) and exc.cause is not None:
        exc = exc.cause
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def chain_error(model: str, exhausted: ChainExhausted) -> AllBackendsFailed:
    """The client error when every backend of a chain failed: 504 when all timed out,
    503 `overloaded` when all that were tried were full, else 503; with Retry-After."""
    kinds = {f.kind for f in exhausted.failures} - {FailureKind.OTHER_SPACE}
    error = AllBackendsFailed
    if kinds == {FailureKind.TIMEOUT}:
        error = BackendsTimedOut
    elif kinds and kinds <= {FailureKind.OVERLOADED, FailureKind.TIMEOUT}:
        error = Overloaded
    backends = [
        {"backend": f.backend, "reason": f.reason, "kind": f.kind.value} for f in exhausted.failures
    ]
    return error(
        f"every backend of model {model!r} failed: {exhausted}",
        extra={"backends": backends},
        headers={"Retry-After": "1"},
    )


class EmbeddingRouter:
    """Routes requests to backend deployments along each model's fallback chain.

    The HTTP app is built per replica from this router (`__serve_build_asgi_app__`),
    so its limits come from the config and it can be tested without Ray.
    """

    def __init__(self, config: dict[str, Any], handles: dict[str, DeploymentHandle]) -> None:
        self._config: EmbedServeConfig = parse_config(config)
        self._handles = handles
        setup_tracing(self._config.server.tracing)
        self._metrics = RouterMetrics()
        auth = self._config.server.auth
        self._keys = KeyStore(load_keys(auth.keys_env, auth.keys_file))
        self._limiter = RateLimiter(auth.requests_per_minute, auth.tokens_per_minute)
        for name in self._config.backends:
            # Tokenizers only (no weights): over-long inputs are refused right here.
            self._config.backend(name).load_tokenizer()
        self._described: dict[str, dict[str, Any]] = {}
        self._chains = {
            model: [
                ChainLink(name, self._config.space_id(name), self._config.backends[name].timeout_s)
                for name in model_config.chain
            ]
            for model, model_config in self._config.models.items()
        }

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_http_app(self)

    @property
    def keys(self) -> KeyStore:
        """The API keys this router accepts (none: authentication is off)."""
        return self._keys

    @property
    def config(self) -> EmbedServeConfig:
        """The validated configuration this router serves."""
        return self._config

    async def create_embeddings(
        self, request: EmbeddingsRequest, key: ApiKey | None = None
    ) -> JSONResponse:
        """Embed texts (OpenAI-compatible), with embedserve's metadata in the answer."""
        started = time.monotonic()
        # Only configured names become tags: a client must not be able to mint new
        # metric series (or put arbitrary text into them).
        model = request.model if request.model in self._chains else "(unknown)"
        attributes = {"embedserve.model": model}
        with tracer().start_as_current_span("embeddings", attributes=attributes) as span:
            try:
                response, served, tokens = await self._embed(request, key)
            except EmbedServeError as error:
                span.set_attribute("http.status_code", error.status_code)
                elapsed = time.monotonic() - started
                self._metrics.request(model, "", error.status_code, elapsed, 0, 0)
                raise
            span.set_attributes(
                {
                    "http.status_code": 200,
                    "embedserve.backend": served.link.backend,
                    "embedserve.space_id": served.link.space_id,
                    "embedserve.fallback": served.fallback,
                }
            )
        rows = len(served.answer.token_counts)
        elapsed = time.monotonic() - started
        self._metrics.request(model, served.link.backend, 200, elapsed, rows, tokens)
        return response

    async def _embed(
        self, request: EmbeddingsRequest, key: ApiKey | None
    ) -> tuple[JSONResponse, Served, int]:
        chain = self._chain(request.model)
        texts = request_texts(request.input, self._config.server.max_inputs_per_request)
        if request.dimensions is not None:
            await self._check_dimensions(chain[0].backend, request.dimensions)
        inputs = [EmbedInput(text, request.input_type) for text in texts]
        truncate = self._truncates(request)
        tokens = self._check_token_limits(
            chain[0].backend, inputs, truncate, isinstance(request.input, str)
        )
        self._limiter.acquire(key, tokens)
        deadline = self._config.server.request_timeout_s
        try:
            served = await asyncio.wait_for(
                serve_with_fallback(
                    chain,
                    lambda link: self._attempt(request.model, link, inputs, request.dimensions),
                    expected_rows=len(inputs),
                    allow_cross_space=self._config.models[request.model].allow_cross_space,
                    describe_error=describe_backend_error,
                ),
                timeout=deadline,
            )
        except asyncio.TimeoutError:
            raise RequestTimedOut(
                f"the request did not finish within the server's deadline of {deadline:g}s",
                headers={"Retry-After": "1"},
            ) from None
        except ChainExhausted as exc:
            self._metrics.failures(request.model, exc.failures, served=False)
            raise chain_error(request.model, exc) from None
        self._metrics.failures(request.model, served.failures, served=True)
        truncated = self._truncated_tokens(served.link.backend, inputs) if truncate else 0
        response = self._respond(request, served, truncated)
        return response, served, sum(served.answer.token_counts)

    def _truncates(self, request: EmbeddingsRequest) -> bool:
        if request.truncate is not None:
            return request.truncate
        return self._config.models[request.model].truncate

    def _check_token_limits(
        self, backend_name: str, inputs: list[EmbedInput], truncate: bool, single: bool
    ) -> int:
        """Refuse inputs over the primary backend's limit; returns the tokens to charge."""
        backend = self._config.backend(backend_name)
        limit = backend.capabilities.max_input_tokens
        counts = backend.count_tokens(inputs)
        check_token_limits(counts, limit, truncate, single)
        return sum(min(count, limit) if limit else count for count in counts)

    def _truncated_tokens(self, backend_name: str, inputs: list[EmbedInput]) -> int:
        # Counted with the tokenizer of the backend that served: fallbacks may differ.
        backend = self._config.backend(backend_name)
        limit = backend.capabilities.max_input_tokens
        return check_token_limits(backend.count_tokens(inputs), limit, True, False)

    async def list_models(self) -> ModelList:
        """Every public model with its chain, spaces, dimensions, modalities and limits."""
        await self._describe_all()
        cards = [self._model_card(name) for name in self._config.models]
        return ModelList(data=cards)

    async def readyz(self) -> JSONResponse:
        """Readiness: every model has at least one backend in its chain that can serve."""
        await self._describe_all()
        models = {
            name: [link.backend for link in chain if self._available(link.backend)]
            for name, chain in self._chains.items()
        }
        ready = all(models.values())
        body = {"status": "ready" if ready else "not ready", "serving_backends": models}
        return JSONResponse(body, status_code=200 if ready else 503)

    def _chain(self, model: str) -> list[ChainLink]:
        try:
            return self._chains[model]
        except KeyError:
            known = ", ".join(sorted(self._chains))
            raise ModelNotFound(
                f"model {model!r} does not exist (models served here: {known})", param="model"
            ) from None

    async def _attempt(
        self, model: str, link: ChainLink, inputs: list[EmbedInput], dimensions: int | None
    ) -> BackendAnswer:
        """One backend attempt of the chain, as a child span of the request."""
        attributes = {
            "embedserve.model": model,
            "embedserve.backend": link.backend,
            "embedserve.space_id": link.space_id,
        }
        with tracer().start_as_current_span("backend_attempt", attributes=attributes):
            return await self._call_backend(link, inputs, dimensions)

    async def _call_backend(
        self, link: ChainLink, inputs: list[EmbedInput], dimensions: int | None
    ) -> BackendAnswer:
        if dimensions is not None:
            # A fallback of another space may not offer the size the primary offers.
            await self._check_dimensions(link.backend, dimensions)
        # Requests larger than a batch are spread over the deployment's replicas.
        size = self._config.backends[link.backend].batching.max_batch_size
        parts = await asyncio.gather(
            *(self._call_replica(link, inputs[i : i + size]) for i in range(0, len(inputs), size))
        )
        return BackendAnswer(
            dense=np.concatenate([part.dense for part in parts]),
            token_counts=[count for part in parts for count in part.token_counts],
        )

    async def _call_replica(self, link: ChainLink, inputs: list[EmbedInput]) -> BackendAnswer:
        """One call to a backend deployment; a replica that died mid-request is retried
        once on another replica of the same deployment (the same space)."""
        try:
            return await self._call_once(link, inputs)
        except REPLICA_LOST as exc:
            logger.warning(
                "a replica of %s was lost mid-request (%s); retrying once",
                link.backend,
                type(exc).__name__,
            )
            return await self._call_once(link, inputs)

    async def _call_once(self, link: ChainLink, inputs: list[EmbedInput]) -> BackendAnswer:
        try:
            handle = self._handles[link.backend]
            return await handle.embed.remote(inputs, current_context_carrier())
        except BackPressureError:
            raise BackendOverloaded(
                f"backend {link.backend} is overloaded: its request queue is full"
            ) from None

    async def _check_dimensions(self, backend: str, dimensions: int) -> None:
        capabilities = await self._capabilities(backend)
        supported = [*capabilities.matryoshka_dimensions]
        if capabilities.dimensions is not None:
            supported.insert(0, capabilities.dimensions)
        if dimensions in supported:
            return
        if capabilities.matryoshka_dimensions:
            sizes = ", ".join(str(size) for size in supported)
            message = (
                f"dimensions={dimensions} is not supported by this model; supported sizes: {sizes}"
            )
        else:
            native = (
                f"{capabilities.dimensions}-dimensional vectors"
                if capabilities.dimensions is not None
                else "vectors of its native size"
            )
            message = (
                f"dimensions={dimensions} is not supported: this model was not trained for "
                f"truncation (Matryoshka) and only produces {native}"
            )
        raise InvalidRequest(message, param="dimensions", code="unsupported_dimensions")

    def _respond(
        self, request: EmbeddingsRequest, served: Served, truncated_tokens: int
    ) -> JSONResponse:
        link, dense = served.link, served.answer.dense
        capabilities = self._static_capabilities(link.backend)
        space = link.space_id
        if request.dimensions is not None and request.dimensions != dense.shape[1]:
            dense = truncate(dense, request.dimensions, renormalize=capabilities.normalized)
            space = truncated_space_id(space, request.dimensions)
        metadata = EmbeddingMetadata(
            model=request.model,
            backend=link.backend,
            space_id=space,
            dimensions=int(dense.shape[1]),
            normalized=capabilities.normalized,
            semantic=capabilities.semantic,
            fallback=served.fallback,
        )
        tokens = sum(served.answer.token_counts)
        body = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": vector}
                for i, vector in enumerate(_encode(dense, request.encoding_format))
            ],
            "usage": Usage(
                prompt_tokens=tokens, total_tokens=tokens, truncated_tokens=truncated_tokens
            ).model_dump(),
            **metadata.model_dump(),
        }
        if served.fallback:
            body["fallback_reasons"] = [
                {"backend": f.backend, "reason": f.reason, "kind": f.kind.value}
                for f in served.failures
            ]
        return JSONResponse(body, headers=_metadata_headers(metadata))

    def _static_capabilities(self, backend: str) -> BackendCapabilities:
        described = self._described.get(backend)
        if described is not None:
            return BackendCapabilities.model_validate(described["capabilities"])
        return self._config.backend(backend).capabilities

    async def _capabilities(self, backend: str) -> BackendCapabilities:
        if backend not in self._described:
            await self._describe(backend)
        return self._static_capabilities(backend)

    async def _describe(self, backend: str) -> None:
        try:
            self._described[backend] = await asyncio.wait_for(
                self._handles[backend].describe.remote(), DESCRIBE_TIMEOUT_S
            )
        except Exception as exc:
            reason = describe_backend_error(exc)
            logger.warning("backend %s did not describe itself: %s", backend, reason)
            stale = self._described.get(backend)
            if stale is not None:
                # Keep the loaded capabilities, not a stale claim that it can serve.
                self._described[backend] = {
                    **stale,
                    "available": None,
                    "reason": f"the backend did not answer: {reason}",
                }

    async def _describe_all(self) -> None:
        """Ask every backend afresh: availability can change (restarts, lost nodes)."""
        await asyncio.gather(*(self._describe(name) for name in self._handles))

    def _available(self, backend: str) -> bool:
        described = self._described.get(backend)
        return bool(described and described["available"])

    def _model_card(self, model: str) -> ModelCard:
        chain = [self._backend_info(link) for link in self._chains[model]]
        return ModelCard(
            id=model,
            space_id=chain[0].space_id,
            dimensions=chain[0].dimensions,
            allow_cross_space=self._config.models[model].allow_cross_space,
            chain=chain,
            max_inputs_per_request=self._config.server.max_inputs_per_request,
        )

    def _backend_info(self, link: ChainLink) -> BackendInfo:
        capabilities = self._static_capabilities(link.backend)
        described = self._described.get(link.backend)
        return BackendInfo(
            name=link.backend,
            kind=self._config.backends[link.backend].kind,
            space_id=link.space_id,
            available=described["available"] if described else None,
            reason=described["reason"] if described else "the backend did not answer",
            dimensions=capabilities.dimensions,
            matryoshka_dimensions=list(capabilities.matryoshka_dimensions),
            max_input_tokens=capabilities.max_input_tokens,
            modalities=list(capabilities.modalities),
            outputs=list(capabilities.outputs),
            normalized=capabilities.normalized,
            semantic=capabilities.semantic,
        )

    def about(self) -> dict[str, Any]:
        """Attribution (`GET /v1/about`): version, configured models, dependency licences."""
        from serve_app.about import about_report  # reads package metadata: only when asked

        return about_report(self._config).model_dump(mode="json")


def _encode(dense: np.ndarray, encoding_format: str) -> list[Any]:
    if encoding_format == "base64":
        return [encode_base64(row) for row in dense]
    return dense.astype(np.float32, copy=False).tolist()


def _metadata_headers(metadata: EmbeddingMetadata) -> dict[str, str]:
    return {
        "X-Embedding-Model": metadata.model,
        "X-Embedding-Backend": metadata.backend,
        "X-Embedding-Space-Id": metadata.space_id,
        "X-Embedding-Dimensions": str(metadata.dimensions),
        "X-Embedding-Normalized": str(metadata.normalized).lower(),
        "X-Embedding-Semantic": str(metadata.semantic).lower(),
        "X-Embedding-Fallback": str(metadata.fallback).lower(),
    }
