"""The fallback chain: try a model's backends in order, only within its vector space.

Pure asyncio, no Ray: the router passes a `call` that reaches a backend deployment.
A backend that raises, times out, is unavailable, or answers with a wrong shape or a
non-finite value counts as failed, and the next eligible backend is tried. A backend of
another space than the chain's first is eligible only with `allow_cross_space`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from embedserve.backend import BackendAnswer, SparseVector


@dataclass(frozen=True)
class ChainLink:
    """One backend of a chain, as the router sees it."""

    backend: str
    space_id: str
    timeout_s: float


@dataclass(frozen=True)
class Refusal:
    """What a replica answers, instead of raising, when its backend cannot serve now (its
    load failed, its canary check failed): the router's call raises `BackendUnavailable`
    with the reason, so the chain moves on, and Serve logs no traceback per request."""

    reason: str


class FailureKind(str, Enum):
    """How a backend failed; decides the status when every backend failed."""

    ERROR = "error"
    TIMEOUT = "timeout"
    OVERLOADED = "overloaded"
    INVALID_ANSWER = "invalid_answer"
    OTHER_SPACE = "other_space"


class BackendOverloaded(Exception):
    """A backend's queue is full; raised by the router's `call` so the chain moves on."""


class InvalidAnswer(Exception):
    """A `call` found its backend's answer unusable (see `check_answer`) before the chain
    did, as a cache must before storing it."""


@dataclass(frozen=True)
class Failure:
    """Why one backend of the chain did not serve."""

    backend: str
    reason: str
    kind: FailureKind = FailureKind.ERROR


@dataclass(frozen=True)
class Served:
    """The answer of the backend that served, and the failures before it."""

    link: ChainLink
    answer: BackendAnswer
    failures: list[Failure] = field(default_factory=list)

    @property
    def fallback(self) -> bool:
        """Whether a backend after the chain's first served."""
        return bool(self.failures)


class ChainExhausted(Exception):
    """No backend of the chain could serve; `failures` says why for each."""

    def __init__(self, failures: list[Failure]) -> None:
        self.failures = failures
        reasons = "; ".join(f"{f.backend}: {f.reason}" for f in failures)
        super().__init__(f"every backend failed ({reasons})")


def check_answer(answer: BackendAnswer, expected_rows: int) -> str | None:
    """Why an answer cannot be served (wrong shape, non-finite values), or None."""
    dense = answer.dense
    if dense.ndim != 2 or dense.shape[0] != expected_rows or dense.shape[1] == 0:
        return f"answered with shape {dense.shape} for {expected_rows} inputs"
    if len(answer.token_counts) != expected_rows:
        return f"answered {len(answer.token_counts)} token counts for {expected_rows} inputs"
    finite_rows = np.isfinite(dense).all(axis=1)
    if not finite_rows.all():
        bad = int((~finite_rows).sum())
        return f"answered non-finite values (NaN or inf) in {bad} of {expected_rows} vectors"
    extra = [
        row.values if isinstance(row, SparseVector) else row
        for row in (*(answer.sparse or ()), *(answer.multivector or ()))
        if row is not None
    ]
    if not all(np.isfinite(values).all() for values in extra):
        return "answered non-finite values (NaN or inf) in sparse or multi-vector output"
    return None


def eligible(link: ChainLink, chain_space: str, allow_cross_space: bool) -> bool:
    """Whether `link` may serve a chain whose first backend is in `chain_space`."""
    return allow_cross_space or link.space_id == chain_space


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


async def serve_with_fallback(
    chain: Sequence[ChainLink],
    call: Callable[[ChainLink], Awaitable[BackendAnswer]],
    expected_rows: int,
    allow_cross_space: bool = False,
    describe_error: Callable[[BaseException], str] = _reason,
) -> Served:
    """Try the chain's backends in order and return the first valid answer.

    Args:
        chain: the model's backends, first is primary; its space is the chain's space.
        call: reaches one backend with the request and returns its answer.
        expected_rows: how many vectors a valid answer has.
        allow_cross_space: let backends of another space serve.
        describe_error: turns a backend's exception into a short reason.

    Raises:
        ChainExhausted: no backend served; lists every backend's reason.
    """
    failures: list[Failure] = []
    chain_space = chain[0].space_id
    for link in chain:
        if not eligible(link, chain_space, allow_cross_space):
            reason = (
                f"vector space {link.space_id} is not the chain's space {chain_space} "
                "and allow_cross_space is off"
            )
            failures.append(Failure(link.backend, reason, FailureKind.OTHER_SPACE))
            continue
        try:
            answer = await asyncio.wait_for(call(link), timeout=link.timeout_s)
        except asyncio.TimeoutError:
            reason = f"timed out after {link.timeout_s:g}s"
            failures.append(Failure(link.backend, reason, FailureKind.TIMEOUT))
            continue
        except BackendOverloaded as exc:
            failures.append(Failure(link.backend, str(exc), FailureKind.OVERLOADED))
            continue
        except InvalidAnswer as exc:
            failures.append(Failure(link.backend, str(exc), FailureKind.INVALID_ANSWER))
            continue
        except Exception as exc:
            failures.append(Failure(link.backend, describe_error(exc)))
            continue
        problem = check_answer(answer, expected_rows)
        if problem is not None:
            failures.append(Failure(link.backend, problem, FailureKind.INVALID_ANSWER))
            continue
        return Served(link, answer, failures)
    raise ChainExhausted(failures)
