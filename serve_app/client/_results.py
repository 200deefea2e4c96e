"""What the client returns: vectors with the space that produced them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from embedserve.backend import SparseVector
from embedserve.space import SpaceMismatch


@dataclass(frozen=True, kw_only=True)
class SpaceStamp:
    """The metadata the server stamps on every answer: store it with the vectors.

    `backend` is the configured backend that served; when a long input list went out as
    several requests that backends of one space served, it lists them, comma-separated.
    """

    model: str
    backend: str
    space_id: str
    dimensions: int
    normalized: bool
    semantic: bool
    fallback: bool
    fallback_reasons: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> SpaceStamp:
        """The stamp of one response body."""
        return cls(
            model=body["model"],
            backend=body["backend"],
            space_id=body["space_id"],
            dimensions=int(body["dimensions"]),
            normalized=bool(body["normalized"]),
            semantic=bool(body["semantic"]),
            fallback=bool(body["fallback"]),
            fallback_reasons=tuple(body.get("fallback_reasons", ())),
        )


@dataclass(frozen=True)
class Usage:
    """Tokens the request(s) cost, and tokens truncation dropped."""

    prompt_tokens: int = 0
    truncated_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.truncated_tokens + other.truncated_tokens,
        )


@dataclass(frozen=True, kw_only=True)
class Embeddings(SpaceStamp):
    """Dense vectors, one float32 row per input in input order, with their space."""

    vectors: np.ndarray
    usage: Usage = Usage()

    def __len__(self) -> int:
        return len(self.vectors)


@dataclass(frozen=True, kw_only=True)
class SparseEmbeddings(SpaceStamp):
    """Sparse (lexical) vectors, one per input in input order, with their space."""

    vectors: list[SparseVector]
    usage: Usage = Usage()

    def __len__(self) -> int:
        return len(self.vectors)


@dataclass(frozen=True, kw_only=True)
class MultiVectorEmbeddings(SpaceStamp):
    """One (tokens x dimensions) float32 array per input (ColBERT-style), with their space."""

    vectors: list[np.ndarray]
    usage: Usage = Usage()

    def __len__(self) -> int:
        return len(self.vectors)


Result = Embeddings | SparseEmbeddings | MultiVectorEmbeddings


def merge_parts(parts: Sequence[Result]) -> Result:
    """One result from the answers to consecutive parts of an input list.

    Raises:
        SpaceMismatch: the parts came from different spaces (a fallback of another model
            served some of them): the rows are not comparable, so none is returned.
    """
    first = parts[0]
    spaces = list(dict.fromkeys(part.space_id for part in parts))
    if len(spaces) > 1:
        raise SpaceMismatch(
            f"the inputs were embedded in {len(spaces)} spaces ({', '.join(spaces)}): a "
            "fallback of another model served part of them; nothing is returned, retry"
        )
    backends = ",".join(dict.fromkeys(part.backend for part in parts))
    usage = sum((part.usage for part in parts), Usage())
    if isinstance(first, Embeddings):
        vectors: Any = np.concatenate([np.asarray(part.vectors) for part in parts])
    else:
        vectors = [row for part in parts for row in part.vectors]
    return replace(
        first,
        backend=backends,
        fallback=any(part.fallback for part in parts),
        fallback_reasons=tuple(reason for part in parts for reason in part.fallback_reasons),
        vectors=vectors,
        usage=usage,
    )
