"""Planning a request's inputs into chunks that each fit one batch of a backend.

Serve replicas and bulk encoder actors plan with the same `plan_chunks`, so a backend
sees batches of the same shape from both.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from embedserve.backend import EmbedInput
from embedserve.config import BatchingConfig


@dataclass(frozen=True)
class Chunk:
    """Inputs of one request that fit in one batch, with their token count."""

    inputs: tuple[EmbedInput, ...]
    tokens: int
    queued_at: float = field(default_factory=time.monotonic)  # for the queue-wait metric
    trace_context: dict[str, str] | None = None  # the request's span, for the batch span
    # Runs in a batch of its own: canary probes must not depend on their neighbours
    # (a quantised model's vectors vary a little with the batch they are in).
    alone: bool = False

    def __len__(self) -> int:
        return len(self.inputs)


def plan_chunks(
    inputs: Sequence[EmbedInput], token_counts: Sequence[int], limits: BatchingConfig
) -> list[Chunk]:
    """Split a request's inputs, in order, into chunks within both batch limits.

    A single input over the token budget becomes a chunk of its own, charged at the
    budget, so that it is still embedded (alone) rather than rejected here.

    Args:
        inputs: the request's inputs, in order.
        token_counts: each input's token count by the backend's tokenizer.
        limits: the batch limits, with a token number as `max_batch_tokens`.

    Returns:
        The chunks, covering `inputs` in order.
    """
    chunks: list[Chunk] = []
    start, tokens = 0, 0
    for i, count in enumerate(token_counts):
        over_items = i - start >= limits.max_batch_size
        over_tokens = tokens + count > limits.batch_tokens
        if i > start and (over_items or over_tokens):
            chunks.append(Chunk(tuple(inputs[start:i]), tokens))
            start, tokens = i, 0
        tokens += count
    if start < len(inputs):
        chunks.append(Chunk(tuple(inputs[start:]), tokens))
    return [Chunk(c.inputs, min(c.tokens, limits.batch_tokens)) for c in chunks]
