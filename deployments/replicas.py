"""Calls from the router to one backend deployment: a request larger than a batch is
spread over the deployment's replicas, a replica lost mid-request is retried once, and a
full queue is reported as `BackendOverloaded` so the fallback chain moves on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from embedserve.backend import (
    BackendAnswer,
    BackendUnavailable,
    EmbeddingBatch,
    EmbedInput,
    OutputKind,
)
from embedserve.runtime.tracing import current_context_carrier
from embedserve.serving.fallback import BackendOverloaded, Refusal

logger = logging.getLogger("ray.serve")

# A replica that died or became unreachable while holding a request.
REPLICA_LOST = (RayActorError, ReplicaUnavailableError)


class BackendCalls:
    """Embeds inputs on backend deployments through their handles."""

    def __init__(self, handles: dict[str, DeploymentHandle]) -> None:
        self._handles = handles

    async def embed(
        self, backend: str, inputs: list[EmbedInput], counts: list[int] | None, batch_size: int
    ) -> BackendAnswer:
        """Embed `inputs` on `backend`, in calls of at most one batch each.

        Args:
            backend: the configured backend (deployment) name.
            inputs: the items, in order.
            counts: their token counts by this backend's tokenizer, or None (the replicas
                count).
            batch_size: the items of one call: the batch size the replicas report.

        Returns:
            The parts' answers, concatenated in input order.

        Raises:
            BackendOverloaded: the deployment's queue is full.
            BackendUnavailable: the backend cannot serve now (its replica's `Refusal`).
            RuntimeError: the backend left out an output an item asked for.
        """
        started = time.perf_counter()
        parts = await asyncio.gather(
            *(
                self._call_replica(
                    backend, inputs[i : i + batch_size], counts and counts[i : i + batch_size]
                )
                for i in range(0, len(inputs), batch_size)
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
            # The parts run side by side: the slowest is the request's.
            replica_seconds=max(part.replica_seconds for part in parts),
            call_seconds=time.perf_counter() - started,
        )

    async def _call_replica(
        self, backend: str, inputs: list[EmbedInput], counts: list[int] | None
    ) -> BackendAnswer:
        """One call to the deployment; a replica that died mid-request is retried once on
        another replica of the same deployment (the same space)."""
        try:
            return await self._call_once(backend, inputs, counts)
        except REPLICA_LOST as exc:
            logger.warning(
                "a replica of %s was lost mid-request (%s); retrying once",
                backend,
                type(exc).__name__,
            )
            return await self._call_once(backend, inputs, counts)

    async def _call_once(
        self, backend: str, inputs: list[EmbedInput], counts: list[int] | None
    ) -> BackendAnswer:
        try:
            handle = self._handles[backend]
            answer = await handle.embed.remote(inputs, current_context_carrier(), counts)
        except BackPressureError:
            raise BackendOverloaded(
                f"backend {backend} is overloaded: its request queue is full"
            ) from None
        if isinstance(answer, Refusal):
            raise BackendUnavailable(answer.reason)
        return answer


def _check_outputs(batch: EmbeddingBatch, inputs: Sequence[EmbedInput]) -> None:
    """A backend that left out an output an item asked for has failed (the chain moves on)."""
    for kind, rows in (
        (OutputKind.SPARSE, batch.sparse),
        (OutputKind.MULTIVECTOR, batch.multivector),
    ):
        wanted = [i for i, item in enumerate(inputs) if kind in item.outputs]
        if wanted and (rows is None or any(rows[i] is None for i in wanted)):
            raise RuntimeError(f"the backend answered without the {kind.value} output")
