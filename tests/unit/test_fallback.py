"""The fallback chain (`serve_with_fallback`): order, vector spaces, answer checks, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from embedserve import EmbedInput
from embedserve.backend import BackendAnswer
from embedserve.plugins.hash_backend import HashBackend
from embedserve.serving.fallback import (
    ChainExhausted,
    ChainLink,
    Served,
    serve_with_fallback,
)

TEXTS = ["a red fox", "the lazy dog", "vector spaces"]
INPUTS = [EmbedInput(text) for text in TEXTS]
SPACE = "hash-aaaaaaaaaaaa"
OTHER_SPACE = "hash-bbbbbbbbbbbb"

Behaviour = Callable[[], Awaitable[BackendAnswer]]


def hash_answer(inputs: list[EmbedInput] = INPUTS, seed: int = 0) -> BackendAnswer:
    """A real answer from the hash backend, as a backend replica returns it."""
    backend = HashBackend({"dimensions": 32, "seed": seed})
    dense = backend.embed_batch(inputs).dense
    return BackendAnswer(dense, backend.count_tokens(inputs))


async def answers(seed: int = 0) -> BackendAnswer:
    return hash_answer(seed=seed)


async def raises() -> BackendAnswer:
    raise RuntimeError("CUDA out of memory\nsecond line of the traceback text")


async def answers_nan() -> BackendAnswer:
    answer = hash_answer()
    dense = answer.dense.copy()
    dense[1, 3] = np.nan
    return BackendAnswer(dense, answer.token_counts)


async def answers_inf() -> BackendAnswer:
    answer = hash_answer()
    dense = answer.dense.copy()
    dense[0, 0] = np.inf
    dense[2, 5] = -np.inf
    return BackendAnswer(dense, answer.token_counts)


async def answers_too_few_rows() -> BackendAnswer:
    return hash_answer(INPUTS[:2])


async def answers_too_few_token_counts() -> BackendAnswer:
    answer = hash_answer()
    return BackendAnswer(answer.dense, answer.token_counts[:-1])


async def answers_zero_width() -> BackendAnswer:
    return BackendAnswer(np.zeros((len(INPUTS), 0), dtype=np.float32), [1] * len(INPUTS))


async def answers_one_dimensional() -> BackendAnswer:
    return BackendAnswer(np.ones(len(INPUTS), dtype=np.float32), [1] * len(INPUTS))


async def sleeps() -> BackendAnswer:
    await asyncio.sleep(10)
    return hash_answer()


class Backends:
    """Each link's behaviour by backend name, and the order in which they were called."""

    def __init__(self, **behaviours: Behaviour) -> None:
        self.behaviours = behaviours
        self.called: list[str] = []

    async def call(self, link: ChainLink) -> BackendAnswer:
        self.called.append(link.backend)
        return await self.behaviours[link.backend]()


def link(backend: str, space: str = SPACE, timeout_s: float = 5.0) -> ChainLink:
    return ChainLink(backend, space, timeout_s)


def serve(chain: list[ChainLink], backends: Backends, **kwargs: object) -> Served:
    return asyncio.run(serve_with_fallback(chain, backends.call, len(INPUTS), **kwargs))


def exhaust(chain: list[ChainLink], backends: Backends, **kwargs: object) -> ChainExhausted:
    with pytest.raises(ChainExhausted) as info:
        serve(chain, backends, **kwargs)
    return info.value


def test_first_backend_serves_without_fallback() -> None:
    backends = Backends(gpu=answers, cpu=answers)
    served = serve([link("gpu"), link("cpu")], backends)
    assert served.link.backend == "gpu"
    assert served.fallback is False
    assert served.failures == []
    assert backends.called == ["gpu"]
    np.testing.assert_array_equal(served.answer.dense, hash_answer().dense)


def test_raising_backend_falls_back_to_the_same_space() -> None:
    backends = Backends(gpu=raises, cpu=answers)
    served = serve([link("gpu"), link("cpu")], backends)
    assert served.link.backend == "cpu"
    assert served.fallback is True
    assert [f.backend for f in served.failures] == ["gpu"]
    # The default reason is the exception type and the first line of its message.
    assert served.failures[0].reason == "RuntimeError: CUDA out of memory"


def test_describe_error_shapes_the_reason() -> None:
    backends = Backends(gpu=raises, cpu=answers)
    served = serve(
        [link("gpu"), link("cpu")],
        backends,
        describe_error=lambda exc: f"custom: {type(exc).__name__}",
    )
    assert served.failures[0].reason == "custom: RuntimeError"


def test_backend_of_another_space_is_skipped_by_default() -> None:
    backends = Backends(gpu=raises, other=lambda: answers(seed=1), cpu=answers)
    served = serve([link("gpu"), link("other", OTHER_SPACE), link("cpu")], backends)
    assert served.link.backend == "cpu"
    assert backends.called == ["gpu", "cpu"], "a backend of another space must not be called"
    skipped = served.failures[1]
    assert skipped.backend == "other"
    assert "allow_cross_space" in skipped.reason
    assert OTHER_SPACE in skipped.reason and SPACE in skipped.reason


def test_only_another_space_left_exhausts_the_chain() -> None:
    backends = Backends(gpu=raises, other=answers)
    error = exhaust([link("gpu"), link("other", OTHER_SPACE)], backends)
    assert backends.called == ["gpu"]
    assert [f.backend for f in error.failures] == ["gpu", "other"]
    assert "allow_cross_space" in error.failures[1].reason


def test_allow_cross_space_lets_another_space_serve() -> None:
    backends = Backends(gpu=raises, other=lambda: answers(seed=1))
    served = serve([link("gpu"), link("other", OTHER_SPACE)], backends, allow_cross_space=True)
    assert served.link == link("other", OTHER_SPACE)
    assert served.fallback is True
    np.testing.assert_array_equal(served.answer.dense, hash_answer(seed=1).dense)


def test_chain_space_is_the_first_backends_even_when_it_fails() -> None:
    backends = Backends(gpu=raises, other=answers, other_cpu=answers)
    error = exhaust(
        [link("gpu"), link("other", OTHER_SPACE), link("other_cpu", OTHER_SPACE)], backends
    )
    assert backends.called == ["gpu"]
    assert all("allow_cross_space" in f.reason for f in error.failures[1:])


@pytest.mark.parametrize("bad", [answers_nan, answers_inf], ids=["nan", "inf"])
def test_non_finite_answer_counts_as_failed(bad: Behaviour) -> None:
    backends = Backends(gpu=bad, cpu=answers)
    served = serve([link("gpu"), link("cpu")], backends)
    assert served.link.backend == "cpu"
    assert np.isfinite(served.answer.dense).all()
    assert "non-finite" in served.failures[0].reason


@pytest.mark.parametrize("bad", [answers_nan, answers_inf], ids=["nan", "inf"])
def test_non_finite_answer_is_never_served(bad: Behaviour) -> None:
    error = exhaust([link("gpu")], Backends(gpu=bad))
    assert error.failures[0].backend == "gpu"
    assert "NaN or inf" in error.failures[0].reason


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (answers_too_few_rows, "shape (2, 32) for 3 inputs"),
        (answers_too_few_token_counts, "2 token counts for 3 inputs"),
        (answers_zero_width, "shape (3, 0)"),
        (answers_one_dimensional, "shape (3,)"),
    ],
    ids=["rows", "token-counts", "zero-width", "1-d"],
)
def test_wrong_shape_counts_as_failed(bad: Behaviour, words: str) -> None:
    backends = Backends(gpu=bad, cpu=answers)
    served = serve([link("gpu"), link("cpu")], backends)
    assert served.link.backend == "cpu"
    assert served.answer.dense.shape == (3, 32)
    assert words in served.failures[0].reason


def test_slow_backend_times_out_and_falls_back() -> None:
    backends = Backends(gpu=sleeps, cpu=answers)
    served = serve([link("gpu", timeout_s=0.05), link("cpu")], backends)
    assert served.link.backend == "cpu"
    assert served.failures[0].backend == "gpu"
    assert served.failures[0].reason == "timed out after 0.05s"


def test_timeout_is_per_link() -> None:
    async def slowish() -> BackendAnswer:
        await asyncio.sleep(0.05)
        return hash_answer()

    backends = Backends(gpu=slowish, cpu=answers)
    served = serve([link("gpu", timeout_s=2.0), link("cpu", timeout_s=0.01)], backends)
    assert served.link.backend == "gpu"
    assert served.fallback is False


def test_every_backend_failing_lists_each_reason_in_order() -> None:
    backends = Backends(a=raises, b=sleeps, c=answers_nan, d=answers, e=answers_too_few_rows)
    chain = [
        link("a"),
        link("b", timeout_s=0.02),
        link("c"),
        link("d", OTHER_SPACE),
        link("e"),
    ]
    error = exhaust(chain, backends)
    assert [f.backend for f in error.failures] == ["a", "b", "c", "d", "e"]
    reasons = [f.reason for f in error.failures]
    assert reasons[0].startswith("RuntimeError")
    assert "timed out" in reasons[1]
    assert "non-finite" in reasons[2]
    assert "allow_cross_space" in reasons[3]
    assert "shape" in reasons[4]
    for failure in error.failures:
        assert f"{failure.backend}: {failure.reason}" in str(error)
