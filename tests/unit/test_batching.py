"""Batch planning (`plan_chunks`) and continuous batching (`ContinuousBatcher`) under both
batch limits."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest

from embedserve import EmbedInput
from embedserve.config import BatchingConfig
from embedserve.deployments.batching import ContinuousBatcher
from embedserve.runtime.batch_plan import Chunk, plan_chunks

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
    assert chunks[1].tokens + chunks[2].tokens > 10, "it shares its batch with nothing"


def test_only_input_over_the_budget() -> None:
    (chunk,) = plan_chunks(inputs_for([500]), [500], limits(8, 100))
    assert chunk.tokens == 100  # it fits a batch alone: the batcher can always take it


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
            if len(chunk) > 1:
                assert sum(actual) <= batching.max_batch_tokens, where
            assert chunk.tokens == min(sum(actual), batching.max_batch_tokens), where


class RecordingModel:
    """Stands in for a backend behind the batcher: records each batch, answers every chunk
    with its own texts, and computes only when the test lets it."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[Chunk]] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.fail_on = fail_on

    async def __call__(self, chunks: list[Chunk]) -> list[tuple[str, ...]]:
        self.batches.append(chunks)
        self.started.set()
        await self.release.wait()
        if any(item.text == self.fail_on for chunk in chunks for item in chunk.inputs):
            raise ValueError("the model failed on this batch")
        return [tuple(item.text for item in chunk.inputs) for chunk in chunks]


def chunk_of(*texts: str, tokens: int = 1) -> Chunk:
    return Chunk(tuple(EmbedInput(t) for t in texts), tokens)


def test_chunks_arriving_during_a_batch_go_together_in_the_next() -> None:
    async def scenario() -> None:
        model = RecordingModel()
        batcher = ContinuousBatcher(model, limits(32, 1000))
        first = asyncio.create_task(batcher.submit(chunk_of("a")))
        await model.started.wait()  # an idle replica starts a lone chunk at once
        later = [asyncio.create_task(batcher.submit(chunk_of(t, "x"))) for t in "bcd"]
        await asyncio.sleep(0)
        assert batcher.queued_chunks == 3
        model.release.set()
        assert await first == ("a",)
        assert [await task for task in later] == [("b", "x"), ("c", "x"), ("d", "x")]
        assert [len(batch) for batch in model.batches] == [1, 3]

    asyncio.run(scenario())


def test_batches_keep_within_both_limits_in_arrival_order() -> None:
    async def scenario() -> None:
        model = RecordingModel()
        model.release.set()
        batcher = ContinuousBatcher(model, limits(4, 10))
        chunks = [
            chunk_of(*(f"{i}.{j}" for j in range(n)), tokens=t)
            for i, (n, t) in enumerate([(2, 3), (2, 3), (1, 5), (3, 1), (1, 10), (2, 2)])
        ]
        answers = await asyncio.gather(*(batcher.submit(c) for c in chunks))
        assert answers == [tuple(item.text for item in c.inputs) for c in chunks]
        order = [c for batch in model.batches for c in batch]
        assert order == chunks
        for batch in model.batches:
            assert sum(len(c) for c in batch) <= 4
            assert sum(c.tokens for c in batch) <= 10

    asyncio.run(scenario())


def test_a_wait_lets_an_idle_replica_gather_company() -> None:
    async def scenario() -> None:
        model = RecordingModel()
        model.release.set()
        batching = BatchingConfig(max_batch_size=3, batch_wait_timeout_s=5, max_batch_tokens=100)
        batcher = ContinuousBatcher(model, batching)
        tasks = [asyncio.create_task(batcher.submit(chunk_of(t))) for t in "ab"]
        await asyncio.sleep(0.05)
        assert model.batches == []  # still waiting: the batch is not full
        tasks.append(asyncio.create_task(batcher.submit(chunk_of("c"))))
        # A full batch goes at once, long before the 5 s wait is over.
        assert await asyncio.wait_for(asyncio.gather(*tasks), 2) == [("a",), ("b",), ("c",)]
        assert [len(batch) for batch in model.batches] == [3]

    asyncio.run(scenario())


def test_an_alone_chunk_gets_a_batch_of_its_own() -> None:
    """Canary probes: never merged with traffic queued around them."""

    async def scenario() -> None:
        model = RecordingModel()
        batcher = ContinuousBatcher(model, limits(32, 1000))
        first = asyncio.create_task(batcher.submit(chunk_of("running")))
        await model.started.wait()
        probe = replace(chunk_of("probe"), alone=True)
        tasks = [
            asyncio.create_task(batcher.submit(c))
            for c in (chunk_of("a"), probe, chunk_of("b"), chunk_of("c"))
        ]
        model.release.set()
        await first
        assert await asyncio.gather(*tasks) == [("a",), ("probe",), ("b",), ("c",)]
        texts = [[item.text for c in batch for item in c.inputs] for batch in model.batches]
        assert texts == [["running"], ["a"], ["probe"], ["b", "c"]]

    asyncio.run(scenario())


def test_a_failing_batch_fails_only_its_own_chunks() -> None:
    async def scenario() -> None:
        model = RecordingModel(fail_on="bad")
        batcher = ContinuousBatcher(model, limits(2, 1000))
        tasks = [asyncio.create_task(batcher.submit(chunk_of(t))) for t in ("ok", "bad", "fine")]
        model.release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], ValueError) and isinstance(results[1], ValueError)
        assert results[2] == ("fine",)
        # The batcher keeps serving after a failure.
        assert await batcher.submit(chunk_of("after")) == ("after",)

    asyncio.run(scenario())


def test_a_cancelled_request_never_reaches_the_model() -> None:
    async def scenario() -> None:
        model = RecordingModel()
        batcher = ContinuousBatcher(model, limits(32, 1000))
        first = asyncio.create_task(batcher.submit(chunk_of("running")))
        await model.started.wait()
        gone = asyncio.create_task(batcher.submit(chunk_of("gone")))
        kept = asyncio.create_task(batcher.submit(chunk_of("kept")))
        await asyncio.sleep(0)
        gone.cancel()
        model.release.set()
        assert await first == ("running",) and await kept == ("kept",)
        texts = [item.text for batch in model.batches for c in batch for item in c.inputs]
        assert texts == ["running", "kept"]

    asyncio.run(scenario())


def test_random_concurrent_requests_each_get_their_own_rows() -> None:
    rng = random.Random(SEED)

    async def scenario() -> None:
        model = RecordingModel()
        model.release.set()
        batching = limits(rng.randint(1, 16), rng.randint(1, 60))
        batcher = ContinuousBatcher(model, batching)

        async def request(i: int) -> None:
            await asyncio.sleep(rng.random() / 100)
            counts = [rng.randint(0, 30) for _ in range(rng.randint(1, 20))]
            inputs = [EmbedInput(f"r{i}.{j}") for j in range(len(counts))]
            chunks = plan_chunks(inputs, counts, batching)
            parts = await asyncio.gather(*(batcher.submit(c) for c in chunks))
            assert [text for part in parts for text in part] == [x.text for x in inputs]

        await asyncio.gather(*(request(i) for i in range(40)))
        for batch in model.batches:
            assert sum(len(c) for c in batch) <= batching.max_batch_size
            assert sum(c.tokens for c in batch) <= batching.max_batch_tokens

    for _ in range(20):
        asyncio.run(scenario())


def test_limits_with_an_unresolved_token_budget_are_refused() -> None:
    with pytest.raises(ValueError, match="resolve max_batch_tokens: auto"):
        ContinuousBatcher(RecordingModel(), BatchingConfig())
