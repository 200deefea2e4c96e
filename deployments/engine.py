"""The embedding engine: one request from validation to vectors, with no HTTP in it.

Every API (OpenAI, native) parses its body into a `ParsedRequest`, makes one call,
`EmbeddingEngine.embed`, and renders the `EmbeddingResult`. The engine validates the
request against the model's primary backend (the next one of its chain when the
primary's tokenizer does not load), charges the rate limit, runs the model's fallback
chain within the request's deadline (cache, batch-sized replica calls), cuts Matryoshka
vectors to the asked size, and records the request's span and metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from ray.serve.handle import DeploymentHandle

from embedserve.backend import (
    BackendAnswer,
    BackendCapabilities,
    EmbedInput,
    InputType,
    OutputKind,
    SparseVector,
)
from embedserve.config import EmbedServeConfig
from embedserve.deployments.catalog import BackendCatalog, describe_backend_error
from embedserve.deployments.metrics import RouterMetrics
from embedserve.deployments.replicas import BackendCalls
from embedserve.errors import (
    AllBackendsFailed,
    BackendsTimedOut,
    EmbedServeError,
    Overloaded,
    RequestTimedOut,
)
from embedserve.runtime.tracing import tracer
from embedserve.serving.auth import ApiKey, RateLimiter
from embedserve.serving.cache import EmbeddingCache, cache_key
from embedserve.serving.fallback import (
    ChainExhausted,
    ChainLink,
    Failure,
    FailureKind,
    InvalidAnswer,
    Served,
    check_answer,
    serve_with_fallback,
)
from embedserve.serving.images import ImageLimits
from embedserve.serving.schemas import EmbeddingMetadata
from embedserve.serving.validation import (
    RawItem,
    check_dimensions,
    check_support,
    check_token_limits,
    dropped_tokens,
    request_items,
)
from embedserve.serving.vectors import truncate
from embedserve.space import truncated_space_id


@dataclass(frozen=True)
class ParsedRequest:
    """One embedding request as an API adapter read it, not yet validated."""

    model: str
    # One text, or texts, image items and uploaded images; token ids (OpenAI's shape
    # allows them) are refused by validation with the remedy.
    items: str | Sequence[RawItem | int | list[int]]
    input_type: InputType | None = None
    outputs: tuple[OutputKind, ...] = (OutputKind.DENSE,)
    dimensions: int | None = None
    truncate: bool | None = None  # None: the model's setting, else the server's
    field: str = "input"  # the request field errors name


@dataclass(frozen=True)
class EmbeddingResult:
    """The answer to one request: the vectors of the backend that served, in input order,
    and the metadata a client stores with them."""

    metadata: EmbeddingMetadata
    dense: np.ndarray  # cut to the asked `dimensions` (and renormalised where normalised)
    token_counts: list[int]
    truncated_tokens: int  # tokens that truncation dropped
    sparse: list[SparseVector | None] | None = None
    multivector: list[np.ndarray | None] | None = None
    failures: list[Failure] = field(default_factory=list)  # the backends before it
    # Seconds by stage, for the `Server-Timing` header: the whole request in the engine
    # (`total`), the call to the backend that served (`backend`, the round trip), and
    # the time inside its replica (`replica`: queue and batches).
    timing: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestPlan:
    """A validated request: the model, its items as backend inputs, and how to serve them."""

    model: str
    inputs: list[EmbedInput]
    dimensions: int | None
    truncate: bool
    single: bool  # one text, not a list: errors name `field`, not `field[0]`
    field: str
    # The backend the request was checked against (the chain's primary unless its
    # tokenizer did not load), and the inputs' tokens (before truncation) as its
    # tokenizer counts them: the engine counts once to validate, and that backend's
    # replicas reuse the counts.
    validated_by: str | None = None
    token_counts: list[int] | None = None

    def counts_for(self, backend: str) -> list[int] | None:
        """The token counts of the inputs when `backend` counted them, else None."""
        return self.token_counts if backend == self.validated_by else None


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


class EmbeddingEngine:
    """Serves embedding requests along their models' fallback chains."""

    def __init__(
        self,
        config: EmbedServeConfig,
        catalog: BackendCatalog,
        handles: dict[str, DeploymentHandle],
        limiter: RateLimiter,
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._limiter = limiter
        self._metrics = RouterMetrics()
        self._backends = BackendCalls(handles)
        self._caches = {
            name: EmbeddingCache(model.cache)
            for name, model in config.models.items()
            if model.cache.enabled
        }
        server = config.server
        self._image_limits = ImageLimits(server.max_image_bytes, server.max_image_pixels)

    async def embed(self, request: ParsedRequest, key: ApiKey | None = None) -> EmbeddingResult:
        """Embed a request's items with the first backend of its model's chain that serves.

        Args:
            request: what an API adapter parsed.
            key: the caller's API key, charged by the rate limiter (None: auth is off).

        Returns:
            The vectors and their metadata, with the failures of the backends before.

        Raises:
            EmbedServeError: invalid input, an unknown model, a rate limit, every backend
                failing, or the request's deadline; it carries its status code.
        """
        started = time.monotonic()
        # Only configured names become tags: a client must not be able to mint new
        # metric series (or put arbitrary text into them).
        model = request.model if request.model in self._catalog.chains else "(unknown)"
        attributes = {"embedserve.model": model}
        with tracer().start_as_current_span("embeddings", attributes=attributes) as span:
            try:
                served, result = await self._serve(self._plan(request), key)
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
                    "embedserve.serving.fallback": served.fallback,
                }
            )
        rows, tokens = len(result.token_counts), sum(result.token_counts)
        elapsed = time.monotonic() - started
        self._metrics.request(model, served.link.backend, 200, elapsed, rows, tokens)
        answer = served.answer
        timing = {
            "total": elapsed,
            "backend": answer.call_seconds,
            "replica": answer.replica_seconds,
        }
        return replace(result, timing=timing)

    def truncates(self, model: str, requested: bool | None = None) -> bool:
        """Whether a request for `model` embeds the first tokens of over-long inputs
        instead of refusing them: the request's `truncate`, else the model's, else the
        server's."""
        for setting in (requested, self._config.models[model].truncate):
            if setting is not None:
                return setting
        return self._config.server.truncate

    def _plan(self, request: ParsedRequest) -> RequestPlan:
        """Validate the request's items; an unknown model is refused before them."""
        self._catalog.chain(request.model)
        max_inputs = self._config.server.max_inputs_per_request
        items = request_items(request.items, max_inputs, self._image_limits, request.field)
        return RequestPlan(
            model=request.model,
            inputs=[_embed_input(item, request.input_type, request.outputs) for item in items],
            dimensions=request.dimensions,
            truncate=self.truncates(request.model, request.truncate),
            single=isinstance(request.items, str),
            field=request.field,
        )

    async def _serve(self, plan: RequestPlan, key: ApiKey | None) -> tuple[Served, EmbeddingResult]:
        """Validate the plan against the chain's first backend whose tokenizer loads,
        charge the key and run the chain; returns what served, and the result."""
        chain = self._catalog.chain(plan.model)
        validator = self._validating_backend(plan.model, chain)
        await self._check_backend(validator, plan)
        counts = self._count_tokens(validator, plan)
        plan = replace(plan, token_counts=counts, validated_by=validator)
        self._limiter.acquire(key, self._charged_tokens(validator, counts))
        served = await self._run_chain(plan, chain)
        dropped = self._dropped_tokens(served.link.backend, plan) if plan.truncate else []
        self._metrics.truncation(plan.model, served.link.backend, dropped)
        capabilities = self._catalog.capabilities(served.link.backend)
        return served, _result(plan, served, sum(dropped), capabilities)

    async def _run_chain(self, plan: RequestPlan, chain: list[ChainLink]) -> Served:
        """The first valid answer along the chain, within the server's request deadline."""
        deadline = self._config.server.request_timeout_s
        try:
            served = await asyncio.wait_for(
                serve_with_fallback(
                    chain,
                    lambda link: self._attempt(plan, link),
                    expected_rows=len(plan.inputs),
                    allow_cross_space=self._config.models[plan.model].allow_cross_space,
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
            self._metrics.failures(plan.model, exc.failures, served=False)
            raise chain_error(plan.model, exc) from None
        self._metrics.failures(plan.model, served.failures, served=True)
        return served

    def _validating_backend(self, model: str, chain: list[ChainLink]) -> str:
        """The chain's first backend whose tokenizer loads (the primary, unless its model
        folder is missing, say): requests are validated and counted with it."""
        tokenizers = self._catalog.tokenizers
        backend, failed = tokenizers.first_loadable([link.backend for link in chain])
        if backend is None:
            exhausted = ChainExhausted([Failure(name, why) for name, why in failed.items()])
            self._metrics.failures(model, exhausted.failures, served=False)
            raise chain_error(model, exhausted)
        return backend

    async def _check_backend(self, backend: str, plan: RequestPlan) -> None:
        """Refuse what the backend cannot do: a modality, an output, a `dimensions`."""
        capabilities = self._catalog.capabilities(backend)
        check_support(capabilities, plan.inputs, plan.model, plan.single, plan.field)
        if plan.dimensions is not None:
            loaded = await self._catalog.loaded_capabilities(backend)
            check_dimensions(loaded, plan.dimensions)

    def _count_tokens(self, backend_name: str, plan: RequestPlan) -> list[int]:
        """The plan's tokens per input by the validating backend's tokenizer, inputs over
        its limit refused; the plan carries them on to that backend's replicas."""
        backend = self._catalog.tokenizers.get(backend_name)
        counts = backend.count_tokens(plan.inputs)
        limit = backend.capabilities.max_input_tokens
        check_token_limits(counts, limit, plan.truncate, plan.single, plan.field, plan.model)
        return counts

    def _charged_tokens(self, backend_name: str, counts: list[int]) -> int:
        """Tokens a rate limit charges: each input at most the model's limit."""
        limit = self._catalog.tokenizers.get(backend_name).capabilities.max_input_tokens
        return sum(min(count, limit) if limit else count for count in counts)

    def _dropped_tokens(self, backend_name: str, plan: RequestPlan) -> list[int]:
        """Per input, the tokens truncation dropped, as the tokenizer of the backend that
        served counts them (a fallback's may differ from the primary's)."""
        backend = self._catalog.tokenizers.get(backend_name)
        counts = plan.counts_for(backend_name) or backend.count_tokens(plan.inputs)
        return dropped_tokens(counts, backend.capabilities.max_input_tokens)

    async def _attempt(self, plan: RequestPlan, link: ChainLink) -> BackendAnswer:
        """One backend attempt of the chain, as a child span of the request."""
        attributes = {
            "embedserve.model": plan.model,
            "embedserve.backend": link.backend,
            "embedserve.space_id": link.space_id,
        }
        with tracer().start_as_current_span("backend_attempt", attributes=attributes):
            cache = self._caches.get(plan.model)
            if cache is None or not _dense_only(plan):
                return await self._call(plan, link)
            return await self._call_with_cache(cache, plan, link)

    async def _call(self, plan: RequestPlan, link: ChainLink) -> BackendAnswer:
        """Embed the plan's inputs with the link's backend."""
        if link.backend != plan.validated_by:
            # A fallback of another space may not offer the size, modality or outputs the
            # primary offers: that backend fails and the chain moves on.
            await self._check_backend(link.backend, plan)
        # Split by the batch size the replicas apply now, not the config's: `reconfigure`
        # changes it at run time.
        batching = await self._catalog.batching(link.backend)
        counts = plan.counts_for(link.backend)
        return await self._backends.embed(
            link.backend, plan.inputs, counts, batching.max_batch_size
        )

    async def _call_with_cache(
        self, cache: EmbeddingCache, plan: RequestPlan, link: ChainLink
    ) -> BackendAnswer:
        """Answer cached inputs from the cache of this link's space; only the others
        reach the backend, and only a valid answer is cached."""
        keys = [cache_key(link.space_id, item) for item in plan.inputs]
        found = [cache.get(key) for key in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        self._metrics.cache(plan.model, hits=len(keys) - len(missing), misses=len(missing))
        fresh: dict[int, tuple[np.ndarray, int]] = {}
        replica_seconds = call_seconds = 0.0
        if missing:
            counts = plan.counts_for(link.backend)
            subset = replace(
                plan,
                inputs=[plan.inputs[i] for i in missing],
                token_counts=[counts[i] for i in missing] if counts else None,
            )
            answer = await self._call(subset, link)
            problem = check_answer(answer, len(missing))
            if problem is not None:
                raise InvalidAnswer(problem)
            replica_seconds, call_seconds = answer.replica_seconds, answer.call_seconds
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
            replica_seconds=replica_seconds,
            call_seconds=call_seconds,
        )


def _result(
    plan: RequestPlan, served: Served, truncated_tokens: int, capabilities: BackendCapabilities
) -> EmbeddingResult:
    """The served answer with its dense vectors cut to the asked `dimensions`."""
    link, answer = served.link, served.answer
    dense, space = answer.dense, link.space_id
    if plan.dimensions is not None and plan.dimensions != dense.shape[1]:
        dense = truncate(dense, plan.dimensions, renormalize=capabilities.normalized)
        space = truncated_space_id(space, plan.dimensions)
    metadata = EmbeddingMetadata(
        model=plan.model,
        backend=link.backend,
        space_id=space,
        dimensions=int(dense.shape[1]),
        normalized=capabilities.normalized,
        semantic=capabilities.semantic,
        fallback=served.fallback,
    )
    return EmbeddingResult(
        metadata=metadata,
        dense=dense,
        token_counts=answer.token_counts,
        truncated_tokens=truncated_tokens,
        sparse=answer.sparse,
        multivector=answer.multivector,
        failures=served.failures,
    )


def _dense_only(plan: RequestPlan) -> bool:
    """Only dense vectors are cached."""
    return all(item.outputs == (OutputKind.DENSE,) for item in plan.inputs)


def _embed_input(
    item: str | np.ndarray, input_type: InputType | None, outputs: tuple[OutputKind, ...]
) -> EmbedInput:
    if isinstance(item, str):
        return EmbedInput(item, input_type, outputs=outputs)
    return EmbedInput("", input_type, image=item, outputs=outputs)
