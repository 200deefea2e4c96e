"""Batch planning bounded by both item count and a token budget (no Ray imports).

Ray Serve's `@serve.batch` compares a `batch_size_fn` result with `max_batch_size`. The
cost of a batch is expressed in item units: `max(items, tokens * max_batch_size /
max_batch_tokens)`, so a batch fits exactly when it is within both limits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from serve_app.backend import EmbedInput
from serve_app.config import BatchingConfig


@dataclass(frozen=True)
class Chunk:
    """Inputs of one request that fit in one batch, with their token count."""

    inputs: tuple[EmbedInput, ...]
    tokens: int
    limits: BatchingConfig
    queued_at: float = field(default_factory=time.monotonic)  # for the queue-wait metric
    trace_context: dict[str, str] | None = None  # the request's span, for the batch span

    def __len__(self) -> int:
        return len(self.inputs)


def plan_chunks(
    inputs: Sequence[EmbedInput], token_counts: Sequence[int], limits: BatchingConfig
) -> list[Chunk]:
    """Split a request's inputs, in order, into chunks within both batch limits.

    A single input over the token budget becomes a chunk of its own, charged at the
    budget, so that it is still embedded (alone) rather than rejected here.
    """
    chunks: list[Chunk] = []
    start, tokens = 0, 0
    for i, count in enumerate(token_counts):
        over_items = i - start >= limits.max_batch_size
        over_tokens = tokens + count > limits.max_batch_tokens
        if i > start and (over_items or over_tokens):
            chunks.append(Chunk(tuple(inputs[start:i]), tokens, limits))
            start, tokens = i, 0
        tokens += count
    if start < len(inputs):
        chunks.append(Chunk(tuple(inputs[start:]), tokens, limits))
    return [Chunk(c.inputs, min(c.tokens, limits.max_batch_tokens), limits) for c in chunks]


def batch_cost(chunks: Sequence[Chunk]) -> int:
    """The size of a batch of chunks in item units, for `@serve.batch(batch_size_fn=...)`."""
    limits = chunks[-1].limits
    items = sum(len(c) for c in chunks)
    tokens = sum(c.tokens for c in chunks)
    return max(items, -(-tokens * limits.max_batch_size // limits.max_batch_tokens))
