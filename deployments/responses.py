"""How the HTTP app renders an engine's result: the OpenAI embeddings list and the native
`/v1/embed` results, both stamped with the vector metadata (JSON fields and
`X-Embedding-*` headers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from fastapi.responses import JSONResponse

from embedserve.backend import OutputKind, SparseVector
from embedserve.deployments.engine import EmbeddingResult
from embedserve.serving.schemas import Usage
from embedserve.serving.vectors import encode_base64


class VectorJSONResponse(JSONResponse):
    """JSON written by orjson, which serialises float32 rows straight from numpy: about
    0.3 ms instead of 10 ms for 32 x 384 floats, and each float32 round-trips exactly."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_vectors(vectors: np.ndarray, encoding_format: str) -> list[Any]:
    """Rows as float32 arrays (written as JSON lists), or as base64 of little-endian
    float32 (OpenAI's format)."""
    if encoding_format == "base64":
        return [encode_base64(row) for row in vectors]
    return list(vectors.astype(np.float32, copy=False))


def sparse_body(vector: SparseVector, with_tokens: bool) -> dict[str, Any]:
    """`{"indices": [...], "values": [...]}`, plus `tokens` when asked and known."""
    body: dict[str, Any] = {
        "indices": vector.indices.astype(np.int64, copy=False).tolist(),
        "values": vector.values.astype(np.float32, copy=False).tolist(),
    }
    if with_tokens and vector.tokens is not None:
        body["tokens"] = list(vector.tokens)
    return body


def embeddings_response(result: EmbeddingResult, encoding_format: str) -> JSONResponse:
    """The OpenAI `/v1/embeddings` answer: one embedding object per input, in order."""
    data = [
        {"object": "embedding", "index": i, "embedding": vector}
        for i, vector in enumerate(encode_vectors(result.dense, encoding_format))
    ]
    return metadata_response(result, data)


def embed_response(
    result: EmbeddingResult,
    outputs: Sequence[OutputKind],
    encoding_format: str,
    sparse_tokens: bool,
) -> JSONResponse:
    """The `/v1/embed` answer: per item, the outputs that were asked for, in order."""
    dense = encode_vectors(result.dense, encoding_format) if OutputKind.DENSE in outputs else None
    data = []
    for i in range(result.dense.shape[0]):
        item: dict[str, Any] = {"index": i}
        if dense is not None:
            item["dense"] = dense[i]
        sparse = result.sparse[i] if result.sparse is not None else None
        if OutputKind.SPARSE in outputs and sparse is not None:
            item["sparse"] = sparse_body(sparse, sparse_tokens)
        multivector = result.multivector[i] if result.multivector is not None else None
        if OutputKind.MULTIVECTOR in outputs and multivector is not None:
            item["multivector"] = encode_vectors(multivector, encoding_format)
        data.append(item)
    return metadata_response(result, data)


def metadata_response(result: EmbeddingResult, data: list[dict[str, Any]]) -> JSONResponse:
    """The answer's `data` with its usage, the metadata fields (and fallback reasons),
    and the metadata as headers."""
    tokens = sum(result.token_counts)
    usage = Usage(
        prompt_tokens=tokens, total_tokens=tokens, truncated_tokens=result.truncated_tokens
    )
    metadata = result.metadata
    body = {"object": "list", "data": data, "usage": usage.model_dump(), **metadata.model_dump()}
    if metadata.fallback:
        body["fallback_reasons"] = [
            {"backend": f.backend, "reason": f.reason, "kind": f.kind.value}
            for f in result.failures
        ]
    return VectorJSONResponse(body, headers=result_headers(result))


def result_headers(result: EmbeddingResult) -> dict[str, str]:
    """The `X-Embedding-*` headers of an answer: its metadata, and the tokens truncation
    dropped (always sent, 0 included, so that a client can rely on it); and where the
    time went (`Server-Timing`)."""
    metadata = result.metadata
    return {
        "X-Embedding-Model": metadata.model,
        "X-Embedding-Backend": metadata.backend,
        "X-Embedding-Space-Id": metadata.space_id,
        "X-Embedding-Dimensions": str(metadata.dimensions),
        "X-Embedding-Normalized": str(metadata.normalized).lower(),
        "X-Embedding-Semantic": str(metadata.semantic).lower(),
        "X-Embedding-Fallback": str(metadata.fallback).lower(),
        "X-Embedding-Truncated-Tokens": str(result.truncated_tokens),
        "Server-Timing": server_timing(result.timing),
    }


def server_timing(timing: dict[str, float]) -> str:
    """W3C Server-Timing (what browsers' developer tools show): each stage in ms."""
    return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in timing.items())
