"""The client's protocol without I/O: what to send, how to read answers, when to retry.

Each operation is a generator that yields `HttpCall`s and `Sleep`s and receives the
HTTP responses; the sync and the async client only drive it (`EmbedClient._run`,
`AsyncEmbedClient._run`), so both speak exactly the same protocol.
"""

from __future__ import annotations

import base64
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import numpy as np

from embedserve.backend import SparseVector
from embedserve.client._errors import RequestTooLargeError, api_error
from embedserve.client._results import (
    Embeddings,
    MultiVectorEmbeddings,
    Result,
    SpaceStamp,
    SparseEmbeddings,
    Usage,
    merge_parts,
)
from embedserve.retry import retry_after_seconds

T = TypeVar("T")

# 429: the key's rate limit; 503: every backend overloaded or down. Both say when to
# come back (Retry-After); anything else is the caller's to handle.
RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class HttpCall:
    """One HTTP request to the server (path relative to its base URL)."""

    method: str
    path: str
    json: Any = None


@dataclass(frozen=True)
class Sleep:
    """Wait before the next attempt."""

    seconds: float


Flow = Generator[HttpCall | Sleep, Any, T]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of 429 and 503: `Retry-After` honoured, within `total_s` per request."""

    total_s: float = 60.0
    first_backoff_s: float = 0.5  # without Retry-After: doubled per attempt, up to 8 s

    def delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait before attempt `attempt + 1`."""
        if retry_after_s is not None:
            return retry_after_s
        return min(self.first_backoff_s * 2**attempt, 8.0)


def request_json(call: HttpCall, retry: RetryPolicy) -> Flow[Any]:
    """Send `call`; retry 429/503 while the budget lasts; the JSON body of the answer.

    Raises:
        EmbedServeAPIError: the typed error of any other error status, or of a 429/503
            whose wait would run past the retry budget.
    """
    deadline = time.monotonic() + retry.total_s
    attempt = 0
    while True:
        response: httpx.Response = yield call
        if response.status_code < 400:
            return response.json()
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        if response.status_code in RETRY_STATUSES:
            delay = retry.delay(attempt, retry_after)
            if time.monotonic() + delay <= deadline:
                attempt += 1
                yield Sleep(delay)
                continue
        raise api_error(response.status_code, _body(response), retry_after)


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


@dataclass(frozen=True)
class EmbedPlan:
    """One embedding call: the route, the request fields, the items, how to read a part."""

    path: str
    fields: dict[str, Any]
    items: list[Any]
    item_field: str
    parse: Callable[[dict[str, Any]], Result]
    chunk: int = field(default=2048)

    def body(self, items: Sequence[Any]) -> dict[str, Any]:
        """The request body of consecutive `items`."""
        return {**self.fields, self.item_field: list(items)}


def embed(plan: EmbedPlan, retry: RetryPolicy) -> Flow[Result]:
    """Embed every item of the plan, in requests of at most `plan.chunk` items, in order.

    A request the server finds too large (413) is halved and sent again, down to one
    item; that one item's 413 is raised.
    """
    pending = deque(_chunks(plan.items, plan.chunk))
    parts: list[Result] = []
    while pending:
        items = pending.popleft()
        try:
            body = yield from request_json(HttpCall("POST", plan.path, plan.body(items)), retry)
        except RequestTooLargeError:
            if len(items) == 1:
                raise
            half = len(items) // 2
            pending.extendleft([items[half:], items[:half]])
            continue
        parts.append(plan.parse(body))
    return merge_parts(parts)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def decode_float32(encoded: str) -> np.ndarray:
    """A vector from base64 of little-endian float32 (the OpenAI `base64` format)."""
    return np.frombuffer(base64.b64decode(encoded), dtype="<f4").astype(np.float32)


def _usage(body: dict[str, Any]) -> Usage:
    usage = body.get("usage") or {}
    return Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("truncated_tokens", 0)))


def _stamp(body: dict[str, Any]) -> dict[str, Any]:
    return vars(SpaceStamp.from_body(body))


def parse_openai(body: dict[str, Any]) -> Embeddings:
    """A `/v1/embeddings` answer requested with `encoding_format: base64`."""
    vectors = np.stack([decode_float32(row["embedding"]) for row in _ordered(body)])
    return Embeddings(**_stamp(body), vectors=vectors, usage=_usage(body))


def parse_native_dense(body: dict[str, Any]) -> Embeddings:
    """A `/v1/embed` answer of dense vectors requested as base64."""
    vectors = np.stack([decode_float32(row["dense"]) for row in _ordered(body)])
    return Embeddings(**_stamp(body), vectors=vectors, usage=_usage(body))


def parse_sparse(body: dict[str, Any]) -> SparseEmbeddings:
    """A `/v1/embed` answer of sparse vectors."""
    vectors = [
        SparseVector(
            indices=np.asarray(row["sparse"]["indices"], dtype=np.int64),
            values=np.asarray(row["sparse"]["values"], dtype=np.float32),
            tokens=tuple(row["sparse"]["tokens"]) if row["sparse"].get("tokens") else None,
        )
        for row in _ordered(body)
    ]
    return SparseEmbeddings(**_stamp(body), vectors=vectors, usage=_usage(body))


def parse_multivector(body: dict[str, Any]) -> MultiVectorEmbeddings:
    """A `/v1/embed` answer of multi-vectors requested as base64."""
    vectors = [
        np.stack([decode_float32(token) for token in row["multivector"]]) for row in _ordered(body)
    ]
    return MultiVectorEmbeddings(**_stamp(body), vectors=vectors, usage=_usage(body))


def _ordered(body: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(body["data"], key=lambda item: item["index"])
