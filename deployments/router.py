"""The router deployment: the HTTP ingress of embedserve.

It validates requests, resolves a public model name to its fallback chain, calls backend
deployments through their handles, and stamps every answer with the model, backend,
vector space and dimension metadata (JSON fields and `X-Embedding-*` headers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from embedserve.auth import ApiKey, KeyStore, RateLimiter, load_keys
from embedserve.backend import (
    EmbeddingBatch,
    EmbedInput,
    InputType,
    Modality,
    OutputKind,
)
from embedserve.cache import EmbeddingCache, cache_key
from embedserve.config import EmbedServeConfig, parse_config
from embedserve.deployments.catalog import BackendCatalog, describe_backend_error
from embedserve.deployments.http import create_http_app
from embedserve.deployments.metrics import RouterMetrics
from embedserve.deployments.responses import metadata_response, native_data, openai_data, usage_body
from embedserve.errors import (
    AllBackendsFailed,
    BackendsTimedOut,
    EmbedServeError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    RequestTimedOut,
)
from embedserve.fallback import (
    BackendAnswer,
    BackendOverloaded,
    ChainExhausted,
    ChainLink,
    FailureKind,
    InvalidAnswer,
    Served,
    check_answer,
    serve_with_fallback,
)
from embedserve.images import ImageLimits
from embedserve.schemas import (
    EmbeddingMetadata,
    EmbeddingsRequest,
    EmbedRequest,
    ModelCard,
    ModelList,
)
from embedserve.space import truncated_space_id
from embedserve.tracing import current_context_carrier, setup_tracing, tracer
from embedserve.validation import RawItem, check_dimensions, check_token_limits, request_items
from embedserve.vectors import truncate

logger = logging.getLogger("ray.serve")


# A replica that died or became unreachable while holding a request.
REPLICA_LOST = (RayActorError, ReplicaUnavailableError)


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


@dataclass(frozen=True)
class EmbedJob:
    """A parsed request: the model, its items as backend inputs, and how to serve them."""

    model: str
    inputs: list[EmbedInput]
    dimensions: int | None
    truncate: bool
    single: bool  # `input` was one text, not a list: errors name `input`, not `input[0]`
    field: str = "input"  # the request field errors name
    # Tokens per input (before truncation) as `counted_by`'s tokenizer sees them: the
    # router counts once to validate, and that backend's replicas reuse the counts.
    token_counts: list[int] | None = None
    counted_by: str | None = None

    def counts_for(self, backend: str) -> list[int] | None:
        """The token counts of the inputs when `backend` counted them, else None."""
        return self.token_counts if backend == self.counted_by else None


# The response's `data` list, from what served and the (truncated) dense vectors.
Respond = Callable[[Served, np.ndarray], list[dict[str, Any]]]


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
        self._catalog = BackendCatalog(self._config, handles)
        self._caches = {
            name: EmbeddingCache(model.cache)
            for name, model in self._config.models.items()
            if model.cache.enabled
        }
        server = self._config.server
        self._max_inputs = server.max_inputs_per_request
        self._image_limits = ImageLimits(server.max_image_bytes, server.max_image_pixels)
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
        """Embed texts, and images for models that embed them (OpenAI-compatible), with
        embedserve's metadata in the answer."""

        def prepare() -> EmbedJob:
            self._chain(request.model)
            items = request_items(request.input, self._max_inputs, self._image_limits)
            outputs = (OutputKind.DENSE,)
            return EmbedJob(
                model=request.model,
                inputs=[_embed_input(item, request.input_type, outputs) for item in items],
                dimensions=request.dimensions,
                truncate=self._truncates(request.model, request.truncate),
                single=isinstance(request.input, str),
            )

        def data(served: Served, dense: np.ndarray) -> list[dict[str, Any]]:
            return openai_data(dense, request.encoding_format)

        return await self._observed(request.model, prepare, data, key)

    async def embed(
        self,
        request: EmbedRequest,
        key: ApiKey | None = None,
        uploads: Sequence[RawItem] | None = None,
    ) -> JSONResponse:
        """The native endpoint: texts and images, an input type, and dense, sparse and
        multi-vector outputs, per item in input order, with the same metadata.

        `uploads` are a multipart request's items (texts and image files, in order); they
        replace `request.items`.
        """
        outputs = tuple(dict.fromkeys(request.outputs))

        def prepare() -> EmbedJob:
            self._chain(request.model)
            raw = request.items if uploads is None else uploads
            items = request_items(raw, self._max_inputs, self._image_limits, field="items")
            return EmbedJob(
                model=request.model,
                inputs=[_embed_input(item, request.input_type, outputs) for item in items],
                dimensions=request.dimensions,
                truncate=self._truncates(request.model, request.truncate),
                single=False,
                field="items",
            )

        def data(served: Served, dense: np.ndarray) -> list[dict[str, Any]]:
            return native_data(
                served, dense, outputs, request.encoding_format, request.sparse_tokens
            )

        return await self._observed(request.model, prepare, data, key)

    async def _observed(
        self,
        model: str,
        prepare: Callable[[], EmbedJob],
        respond: Respond,
        key: ApiKey | None,
    ) -> JSONResponse:
        """Parse and serve a request inside its span, recording the request's metrics."""
        started = time.monotonic()
        # Only configured names become tags: a client must not be able to mint new
        # metric series (or put arbitrary text into them).
        model = model if model in self._chains else "(unknown)"
        attributes = {"embedserve.model": model}
        with tracer().start_as_current_span("embeddings", attributes=attributes) as span:
            try:
                job = prepare()
                served, truncated = await self._serve(job, key)
                response = self._respond(job, served, truncated, respond)
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
        tokens = sum(served.answer.token_counts)
        elapsed = time.monotonic() - started
        self._metrics.request(model, served.link.backend, 200, elapsed, rows, tokens)
        return response

    async def _serve(self, job: EmbedJob, key: ApiKey | None) -> tuple[Served, int]:
        """Validate the job against the primary backend and run it along the chain;
        returns what served and how many tokens truncation dropped."""
        chain = self._chain(job.model)
        self._check_support(chain[0].backend, job)
        if job.dimensions is not None:
            await self._check_dimensions(chain[0].backend, job.dimensions)
        job = self._count_tokens(chain[0].backend, job)
        self._limiter.acquire(key, self._charged_tokens(job))
        deadline = self._config.server.request_timeout_s
        try:
            served = await asyncio.wait_for(
                serve_with_fallback(
                    chain,
                    lambda link: self._attempt(job, link),
                    expected_rows=len(job.inputs),
                    allow_cross_space=self._config.models[job.model].allow_cross_space,
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
            self._metrics.failures(job.model, exc.failures, served=False)
            raise chain_error(job.model, exc) from None
        self._metrics.failures(job.model, served.failures, served=True)
        truncated = self._truncated_tokens(served.link.backend, job) if job.truncate else 0
        return served, truncated

    def _truncates(self, model: str, requested: bool | None) -> bool:
        return requested if requested is not None else self._config.models[model].truncate

    def _check_support(self, backend_name: str, job: EmbedJob) -> None:
        """Refuse items of a modality, or outputs, that the backend does not have.

        Raises:
            InvalidRequest: naming the first such item, or `outputs`.
        """
        capabilities = self._catalog.capabilities(backend_name)
        for index, item in enumerate(job.inputs):
            if item.modality not in capabilities.modalities:
                param = _param(job, index)
                kinds = " and ".join(m.value for m in capabilities.modalities)
                raise InvalidRequest(
                    f"{param} is {'an' if item.modality is Modality.IMAGE else 'a'} "
                    f"{item.modality.value}, and model {job.model!r} embeds only {kinds}",
                    param=param,
                    code="unsupported_modality",
                )
        missing = [o.value for o in job.inputs[0].outputs if o not in capabilities.outputs]
        if missing:
            offered = ", ".join(o.value for o in capabilities.outputs)
            raise InvalidRequest(
                f"model {job.model!r} does not produce {', '.join(missing)} output "
                f"(it offers: {offered})",
                param="outputs",
                code="unsupported_output",
            )

    def _count_tokens(self, backend_name: str, job: EmbedJob) -> EmbedJob:
        """Count the job's tokens with the primary backend's tokenizer and refuse inputs
        over its limit; the job carries the counts on to that backend's replicas."""
        backend = self._config.backend(backend_name)
        counts = backend.count_tokens(job.inputs)
        limit = backend.capabilities.max_input_tokens
        check_token_limits(counts, limit, job.truncate, job.single, job.field)
        return replace(job, token_counts=counts, counted_by=backend_name)

    def _charged_tokens(self, job: EmbedJob) -> int:
        """Tokens a rate limit charges: each input at most the model's limit."""
        limit = self._config.backend(job.counted_by).capabilities.max_input_tokens
        return sum(min(count, limit) if limit else count for count in job.token_counts)

    def _truncated_tokens(self, backend_name: str, job: EmbedJob) -> int:
        # Counted with the tokenizer of the backend that served: fallbacks may differ.
        backend = self._config.backend(backend_name)
        counts = job.counts_for(backend_name) or backend.count_tokens(job.inputs)
        return check_token_limits(counts, backend.capabilities.max_input_tokens, True, False)

    async def list_models(self) -> ModelList:
        """Every public model with its chain, spaces, dimensions, modalities and limits."""
        await self._catalog.refresh()
        cards = [self._model_card(name) for name in self._config.models]
        return ModelList(data=cards)

    async def readyz(self) -> JSONResponse:
        """Readiness: every model has at least one backend in its chain that can serve."""
        await self._catalog.refresh()
        models = {
            name: [link.backend for link in chain if self._catalog.available(link.backend)]
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

    async def _attempt(self, job: EmbedJob, link: ChainLink) -> BackendAnswer:
        """One backend attempt of the chain, as a child span of the request."""
        attributes = {
            "embedserve.model": job.model,
            "embedserve.backend": link.backend,
            "embedserve.space_id": link.space_id,
        }
        with tracer().start_as_current_span("backend_attempt", attributes=attributes):
            cache = self._caches.get(job.model)
            if cache is None or not _dense_only(job):
                return await self._call_backend(job, link)
            return await self._call_with_cache(cache, job, link)

    async def _call_with_cache(
        self, cache: EmbeddingCache, job: EmbedJob, link: ChainLink
    ) -> BackendAnswer:
        """Answer cached inputs from the cache of this link's space; only the others
        reach the backend, and only a valid answer is cached."""
        keys = [cache_key(link.space_id, item) for item in job.inputs]
        found = [cache.get(key) for key in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        self._metrics.cache(job.model, hits=len(keys) - len(missing), misses=len(missing))
        fresh: dict[int, tuple[np.ndarray, int]] = {}
        if missing:
            counts = job.counts_for(link.backend)
            subset = replace(
                job,
                inputs=[job.inputs[i] for i in missing],
                token_counts=[counts[i] for i in missing] if counts else None,
            )
            answer = await self._call_backend(subset, link)
            problem = check_answer(answer, len(missing))
            if problem is not None:
                raise InvalidAnswer(problem)
            for row, i in enumerate(missing):
                fresh[i] = (answer.dense[row], answer.token_counts[row])
                cache.put(keys[i], *fresh[i])
        rows = [
            fresh[i] if entry is None else (entry.vector, entry.tokens)
            for i, entry in enumerate(found)
        ]
        return BackendAnswer(
            dense=np.stack([vector for vector, _ in rows]),
            token_counts=[tokens for _, tokens in rows],
        )

    async def _call_backend(self, job: EmbedJob, link: ChainLink) -> BackendAnswer:
        # A fallback of another space may not offer the size, modality or outputs the
        # primary offers: that backend fails and the chain moves on.
        self._check_support(link.backend, job)
        if job.dimensions is not None:
            await self._check_dimensions(link.backend, job.dimensions)
        # Requests larger than a batch are spread over the deployment's replicas.
        size = self._config.backends[link.backend].batching.max_batch_size
        inputs, counts = job.inputs, job.counts_for(link.backend)
        parts = await asyncio.gather(
            *(
                self._call_replica(link, inputs[i : i + size], counts and counts[i : i + size])
                for i in range(0, len(inputs), size)
            )
        )
        batch = EmbeddingBatch.concatenate(
            [EmbeddingBatch(part.dense, part.sparse, part.multivector) for part in parts]
        )
        _check_outputs(batch, inputs)
        return BackendAnswer(
            dense=batch.dense,
            token_counts=[count for part in parts for count in part.token_counts],
            sparse=batch.sparse,
            multivector=batch.multivector,
        )

    async def _call_replica(
        self, link: ChainLink, inputs: list[EmbedInput], counts: list[int] | None
    ) -> BackendAnswer:
        """One call to a backend deployment; a replica that died mid-request is retried
        once on another replica of the same deployment (the same space)."""
        try:
            return await self._call_once(link, inputs, counts)
        except REPLICA_LOST as exc:
            logger.warning(
                "a replica of %s was lost mid-request (%s); retrying once",
                link.backend,
                type(exc).__name__,
            )
            return await self._call_once(link, inputs, counts)

    async def _call_once(
        self, link: ChainLink, inputs: list[EmbedInput], counts: list[int] | None
    ) -> BackendAnswer:
        try:
            handle = self._handles[link.backend]
            return await handle.embed.remote(inputs, current_context_carrier(), counts)
        except BackPressureError:
            raise BackendOverloaded(
                f"backend {link.backend} is overloaded: its request queue is full"
            ) from None

    async def _check_dimensions(self, backend: str, dimensions: int) -> None:
        check_dimensions(await self._catalog.loaded_capabilities(backend), dimensions)

    def _respond(
        self, job: EmbedJob, served: Served, truncated_tokens: int, respond: Respond
    ) -> JSONResponse:
        link, dense = served.link, served.answer.dense
        capabilities = self._catalog.capabilities(link.backend)
        space = link.space_id
        if job.dimensions is not None and job.dimensions != dense.shape[1]:
            dense = truncate(dense, job.dimensions, renormalize=capabilities.normalized)
            space = truncated_space_id(space, job.dimensions)
        metadata = EmbeddingMetadata(
            model=job.model,
            backend=link.backend,
            space_id=space,
            dimensions=int(dense.shape[1]),
            normalized=capabilities.normalized,
            semantic=capabilities.semantic,
            fallback=served.fallback,
        )
        body = {
            "object": "list",
            "data": respond(served, dense),
            "usage": usage_body(served, truncated_tokens),
        }
        return metadata_response(body, metadata, served)

    def _model_card(self, model: str) -> ModelCard:
        chain = [self._catalog.backend_info(link) for link in self._chains[model]]
        return ModelCard(
            id=model,
            space_id=chain[0].space_id,
            dimensions=chain[0].dimensions,
            allow_cross_space=self._config.models[model].allow_cross_space,
            chain=chain,
            max_inputs_per_request=self._config.server.max_inputs_per_request,
        )

    def about(self) -> dict[str, Any]:
        """Attribution (`GET /v1/about`): version, configured models, dependency licences."""
        from embedserve.about import about_report  # reads package metadata: only when asked

        return about_report(self._config).model_dump(mode="json")


def _dense_only(job: EmbedJob) -> bool:
    """Only dense vectors are cached."""
    return all(item.outputs == (OutputKind.DENSE,) for item in job.inputs)


def _embed_input(
    item: str | np.ndarray, input_type: InputType | None, outputs: tuple[OutputKind, ...]
) -> EmbedInput:
    if isinstance(item, str):
        return EmbedInput(item, input_type, outputs=outputs)
    return EmbedInput("", input_type, image=item, outputs=outputs)


def _param(job: EmbedJob, index: int) -> str:
    return job.field if job.single else f"{job.field}[{index}]"


def _check_outputs(batch: EmbeddingBatch, inputs: Sequence[EmbedInput]) -> None:
    """A backend that left out an output an item asked for has failed (the chain moves on)."""
    for kind, rows in (
        (OutputKind.SPARSE, batch.sparse),
        (OutputKind.MULTIVECTOR, batch.multivector),
    ):
        wanted = [i for i, item in enumerate(inputs) if kind in item.outputs]
        if wanted and (rows is None or any(rows[i] is None for i in wanted)):
            raise RuntimeError(f"the backend answered without the {kind.value} output")
