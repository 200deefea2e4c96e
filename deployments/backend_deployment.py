"""The Ray Serve deployment that runs one configured backend.

One deployment per configured backend, named after it. Requests are split into chunks
within the batch limits, and a continuous batcher merges chunks of concurrent requests
into batches bounded by both item count and token budget. Batch limits arrive as the
deployment's `user_config`, so `reconfigure` changes them at run time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from ray import serve

from embedserve import EmbeddingBatch, EmbedInput, default_registry
from embedserve.backend import BackendAnswer
from embedserve.config import (
    DEFAULT_TOKEN_BUDGET,
    BackendConfig,
    BatchingConfig,
    ServerConfig,
)
from embedserve.deployments.backend_loading import LoadSupervisor, replica_log_file
from embedserve.deployments.batching import ContinuousBatcher
from embedserve.deployments.metrics import ReplicaMetrics
from embedserve.deployments.replica_canary import CanarySupervisor
from embedserve.deployments.replica_description import ReplicaDescription
from embedserve.runtime.batch_plan import Chunk, plan_chunks
from embedserve.runtime.tracing import (
    batch_span,
    continued_span,
    current_context_carrier,
    setup_tracing,
)
from embedserve.serving.fallback import Refusal
from embedserve.space import space_id

logger = logging.getLogger("ray.serve")

# A replica whose batches keep failing is reported unhealthy so Serve replaces it.
UNHEALTHY_AFTER_FAILED_BATCHES = 3
_BATCH_LOG_LENGTH = 1024


@dataclass(frozen=True)
class BatchRecord:
    """One executed batch: how many items, from how many requests, how many tokens."""

    items: int
    chunks: int
    tokens: int
    seconds: float


class BackendDeployment:
    """Loads one backend plugin in the replica and embeds batches with it."""

    def __init__(
        self, backend_name: str, backend_config: dict[str, Any], server_config: dict[str, Any]
    ) -> None:
        config = BackendConfig.model_validate(backend_config)
        server = ServerConfig.model_validate(server_config)
        setup_tracing(server.tracing)
        backend_class = default_registry().get(config.kind).backend_class
        self._name = backend_name
        self._backend = backend_class(config.options)
        self._space_id = space_id(self._backend.space_identity())
        self._gpus = config.resources.num_gpus
        # Limits are replaced by reconfigure(user_config) at start, `auto` resolved once
        # the model is loaded.
        self._batching = BatchingConfig(max_batch_tokens=DEFAULT_TOKEN_BUDGET)
        self._batcher = ContinuousBatcher(self._embed_chunks, self._batching)
        self._device_token_budget: int | None = None
        self._max_tokens: int | None = None
        self._batches: deque[BatchRecord] = deque(maxlen=_BATCH_LOG_LENGTH)
        self._failed_batches = 0
        self._metrics = ReplicaMetrics(backend_name)
        self._canary = CanarySupervisor(
            backend_name, self._space_id, config.canary, server, self._metrics
        )
        # A load that fails never fails the replica (see embedserve.deployments.
        # backend_loading): it is retried in the background until the backend loads.
        self._loading = LoadSupervisor(
            backend_name, self._load, config.load_retry, self._metrics.load, replica_log_file()
        )
        self._loading.start()

    def _load(self) -> None:
        """Load the model, size batches for its device, and run the first canary check."""
        self._backend.load()
        self._max_tokens = self._backend.capabilities.max_input_tokens
        self._device_token_budget = self._backend.token_budget(self._gpus)
        self._batcher.limits = self._batching.resolved(self._device_token_budget)
        if not self._canary.enabled:
            return
        try:
            vectors = [self._backend.embed_batch([probe]).dense for probe in self._canary.probes()]
            self._canary.judge(np.concatenate(vectors))
        except Exception as exc:
            # The replica stays up and refuses requests rather than failing to start.
            self._canary.raised(exc)

    def reconfigure(self, batching: dict[str, Any]) -> None:
        """Apply new batch limits (the deployment's `user_config`), `auto` resolved."""
        self._batching = BatchingConfig.model_validate(batching)
        self._batcher.limits = self._batching.resolved(self._device_token_budget)

    async def embed(
        self,
        inputs: Sequence[EmbedInput],
        trace_context: dict[str, str] | None = None,
        token_counts: Sequence[int] | None = None,
    ) -> BackendAnswer | Refusal:
        """Embed one request's inputs; they may share batches with other requests. A
        replica that cannot serve now answers why (`Refusal`).

        `trace_context` carries the router's span, so the replica's spans join its trace.
        `token_counts` are the router's counts with this backend's tokenizer, when it has
        them: the inputs are not tokenized twice before the batch.
        """
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        attributes = {"embedserve.backend": self._name, "embedserve.items": len(inputs)}
        started = time.perf_counter()
        with continued_span("replica.embed", trace_context, attributes):
            answer = await self._embed_planned(inputs, token_counts)
        return replace(answer, replica_seconds=time.perf_counter() - started)

    def _refusal(self) -> Refusal | None:
        """Why this replica cannot serve now: its load or its canary check failed."""
        failure = self._loading.failure
        if failure is not None:
            return Refusal(f"backend {self._name} did not load: {failure.cause}")
        if self._canary.failure is not None:
            return Refusal(
                f"backend {self._name} refuses to serve until its canary check passes: "
                f"{self._canary.failure}"
            )
        return None

    async def _embed_planned(
        self, inputs: Sequence[EmbedInput], counted: Sequence[int] | None
    ) -> BackendAnswer:
        """Split inputs into chunks within the batch limits and embed them batched."""
        if counted is None or len(counted) != len(inputs):
            counted = self._backend.count_tokens(inputs)
        # Inputs over the limit are embedded truncated (the router only lets them through
        # when truncation was asked for), so they cost the limit.
        limit = self._max_tokens
        token_counts = [min(count, limit) if limit else count for count in counted]
        carrier = current_context_carrier()
        chunks = [
            replace(chunk, trace_context=carrier)
            for chunk in plan_chunks(inputs, token_counts, self._batcher.limits)
        ]
        parts = await asyncio.gather(*(self._batcher.submit(chunk) for chunk in chunks))
        batch = EmbeddingBatch.concatenate(parts)
        return BackendAnswer(
            dense=batch.dense,
            token_counts=token_counts,
            sparse=batch.sparse,
            multivector=batch.multivector,
        )

    async def _embed_chunks(self, chunks: list[Chunk]) -> list[EmbeddingBatch]:
        inputs = [item for chunk in chunks for item in chunk.inputs]
        started = time.monotonic()
        attributes = {"embedserve.backend": self._name, "embedserve.items": len(inputs)}
        try:
            with batch_span([chunk.trace_context for chunk in chunks], attributes):
                # In a thread, so the event loop keeps queueing the next batch meanwhile.
                batch = await asyncio.to_thread(self._backend.embed_batch, inputs)
        except Exception:
            self._failed_batches += 1
            raise
        self._failed_batches = 0
        if not np.isfinite(batch.dense).all():
            # Stop serving now; the next health check's canary decides whether to resume.
            self._canary.stop_serving("a batch gave non-finite vectors (NaN or inf)")
        record = BatchRecord(
            len(inputs), len(chunks), sum(c.tokens for c in chunks), time.monotonic() - started
        )
        self._batches.append(record)
        waits = [started - chunk.queued_at for chunk in chunks]
        self._metrics.batch(record.items, record.tokens, waits, record.seconds)
        bounds = np.cumsum([0, *(len(chunk) for chunk in chunks)])
        return [batch.rows(start, stop) for start, stop in itertools.pairwise(bounds)]

    def describe(self) -> ReplicaDescription:
        """This replica's backend: space, availability (with why a load failed),
        capabilities (as loaded, or as configured while the load fails), batch limits and
        last canary check."""
        failure = self._loading.failure
        return ReplicaDescription(
            backend=self._name,
            replica=serve.get_replica_context().replica_id.unique_id,
            kind=self._backend.kind,
            space_id=self._space_id,
            available=failure is None and self._canary.failure is None,
            reason=failure.cause if failure else self._canary.failure,
            load_failure=failure,
            capabilities=self._backend.capabilities,
            batching=self._batcher.limits,
            canary=self._canary.last,
        )

    def batch_records(self) -> list[dict[str, Any]]:
        """The most recent batches this replica executed, oldest first."""
        return [asdict(record) for record in self._batches]

    async def check_health(self) -> None:
        """Serve's health check: fails after repeated batch failures (Serve replaces the
        replica), and re-runs the canary probes through the batch queue like any request.

        A failed canary does not fail the health check: a replacement would load the same
        corrupted weights, and a deployment whose replicas never start also takes the
        fallback backends' app down. The replica stays up, reports itself unavailable
        (`describe`, `/readyz`) and refuses requests until a later canary passes. A
        backend that failed to load passes too, for the same reasons: its replica retries
        the load itself (`LoadSupervisor`)."""
        if self._failed_batches >= UNHEALTHY_AFTER_FAILED_BATCHES:
            raise RuntimeError(
                f"backend {self._name}: the last {self._failed_batches} batches failed"
            )
        if not self._canary.enabled or self._loading.failure is not None:
            return
        try:
            # Through the batch queue like any request, each probe in a batch of its own:
            # the same batches as at start, whatever traffic is queued.
            parts = await asyncio.gather(
                *(self._batcher.submit(self._probe_chunk(probe)) for probe in self._canary.probes())
            )
        except Exception as exc:
            self._canary.raised(exc)
            return
        # Off the event loop: the cluster's reference is one actor call away.
        await asyncio.to_thread(self._canary.judge, np.concatenate([part.dense for part in parts]))

    def _probe_chunk(self, probe: EmbedInput) -> Chunk:
        (count,) = self._backend.count_tokens([probe])
        tokens = min(count, self._max_tokens or count, self._batcher.limits.batch_tokens)
        return Chunk((probe,), tokens, alone=True)
