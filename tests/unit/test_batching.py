"""Batch planning (`plan_chunks`) and batch cost (`batch_cost`) under both batch limits."""

from __future__ import annotations

import random

import pytest

from deployments.batching import Chunk, batch_cost, plan_chunks
from serve_app import EmbedInput
from serve_app.config import BatchingConfig

SEED = 20240611


def inputs_for(token_counts: list[int]) -> list[EmbedInput]:
    return [EmbedInput(f"text {i}") for i in range(len(token_counts))]


def limits(max_batch_size: int, max_batch_tokens: int) -> BatchingConfig:
    return BatchingConfig(max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens)


def random_case(rng: random.Random) -> tuple[list[int], BatchingConfig]:
    """Token counts of one request and batch limits, sometimes with inputs over budget."""
    budget = rng.randint(1, 200)
    size = rng.randint(1, 40)
    counts = [rng.randint(0, budget * 2 if rng.random() < 0.2 else budget) for _ in range(80)]
    return counts[: rng.randint(0, 80)], limits(size, budget)


def test_empty_input_gives_no_chunks() -> None:
    assert plan_chunks([], [], limits(4, 100)) == []


def test_small_request_is_one_chunk() -> None:
    inputs = inputs_for([3, 4, 5])
    (chunk,) = plan_chunks(inputs, [3, 4, 5], limits(4, 100))
    assert chunk.inputs == tuple(inputs)
    assert chunk.tokens == 12
    assert len(chunk) == 3


def test_item_limit_splits() -> None:
    counts = [1] * 10
    chunks = plan_chunks(inputs_for(counts), counts, limits(4, 1000))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert [c.tokens for c in chunks] == [4, 4, 2]


def test_token_limit_splits() -> None:
    counts = [6, 4, 1, 9, 3]
    chunks = plan_chunks(inputs_for(counts), counts, limits(32, 10))
    assert [len(c) for c in chunks] == [2, 2, 1]
    assert [c.tokens for c in chunks] == [10, 10, 3]


def test_input_over_the_budget_is_a_chunk_of_its_own_charged_at_the_budget() -> None:
    counts = [2, 3, 50, 1, 1]
    inputs = inputs_for(counts)
    chunks = plan_chunks(inputs, counts, limits(32, 10))
    assert [c.inputs for c in chunks] == [tuple(inputs[:2]), (inputs[2],), tuple(inputs[3:])]
    assert [c.tokens for c in chunks] == [5, 10, 2]
    assert batch_cost([chunks[1]]) == 32, "alone, it fills exactly one batch"
    assert batch_cost([chunks[1], chunks[2]]) > 32, "it shares its batch with nothing"


def test_only_input_over_the_budget() -> None:
    (chunk,) = plan_chunks(inputs_for([500]), [500], limits(8, 100))
    assert chunk.tokens == 100
    assert batch_cost([chunk]) == 8


def test_chunks_cover_inputs_in_order_within_both_limits() -> None:
    rng = random.Random(SEED)
    for case in range(500):
        counts, batching = random_case(rng)
        inputs = inputs_for(counts)
        chunks = plan_chunks(inputs, counts, batching)
        where = f"case {case}: counts={counts}, limits={batching}"

        assert [item for c in chunks for item in c.inputs] == inputs, where
        position = 0
        for chunk in chunks:
            actual = counts[position : position + len(chunk)]
            position += len(chunk)
            assert 1 <= len(chunk) <= batching.max_batch_size, where
            assert chunk.tokens <= batching.max_batch_tokens, where
            assert chunk.limits == batching, where
            if len(chunk) > 1:
                assert sum(actual) <= batching.max_batch_tokens, where
            assert chunk.tokens == min(sum(actual), batching.max_batch_tokens), where
            # Ray Serve rejects a first item whose cost alone is over max_batch_size.
            assert batch_cost([chunk]) <= batching.max_batch_size, where


def random_batch(rng: random.Random, batching: BatchingConfig) -> list[Chunk]:
    """Chunks of several concurrent requests, as `@serve.batch` might gather them."""
    chunks: list[Chunk] = []
    for _ in range(rng.randint(1, 4)):
        counts = [rng.randint(0, batching.max_batch_tokens) for _ in range(rng.randint(1, 12))]
        planned = plan_chunks(inputs_for(counts), counts, batching)
        chunks += rng.sample(planned, rng.randint(1, len(planned)))
    rng.shuffle(chunks)
    return chunks[: rng.randint(1, len(chunks))]


def test_batch_cost_fits_exactly_when_within_both_limits() -> None:
    rng = random.Random(SEED)
    outcomes = set()
    for case in range(2000):
        batching = limits(rng.randint(1, 64), rng.randint(1, 300))
        batch = random_batch(rng, batching)
        items = sum(len(c) for c in batch)
        tokens = sum(c.tokens for c in batch)
        within = items <= batching.max_batch_size and tokens <= batching.max_batch_tokens
        cost = batch_cost(batch)
        where = f"case {case}: items={items}, tokens={tokens}, limits={batching}, cost={cost}"
        assert (cost <= batching.max_batch_size) == within, where
        assert cost >= items, where
        outcomes.add(within)
    assert outcomes == {True, False}, "the random batches must exercise both outcomes"


@pytest.mark.parametrize(
    ("size", "budget"), [(1, 1), (3, 7), (32, 16384), (4096, 1), (4096, 10**6), (7, 10**9)]
)
def test_batch_cost_at_the_boundaries(size: int, budget: int) -> None:
    batching = limits(size, budget)
    at_budget = Chunk((EmbedInput("a"),), budget, batching)
    assert batch_cost([at_budget]) == size
    if budget > 1:
        just_under = Chunk((EmbedInput("a"),), budget - 1, batching)
        assert batch_cost([just_under]) <= size
        one_over = Chunk((EmbedInput("b"),), 1, batching)
        assert batch_cost([at_budget, one_over]) > size
    full = Chunk(tuple(EmbedInput("c") for _ in range(size)), 0, batching)
    assert batch_cost([full]) == size
    assert batch_cost([full, Chunk((EmbedInput("d"),), 0, batching)]) == size + 1
