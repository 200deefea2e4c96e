"""Response bodies of the router: the OpenAI embeddings list and the native `/v1/embed`
results, both stamped with the vector metadata (JSON fields and `X-Embedding-*` headers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from fastapi.responses import JSONResponse

from embedserve.backend import OutputKind, SparseVector
from embedserve.fallback import Served
from embedserve.schemas import EmbeddingMetadata, Usage
from embedserve.vectors import encode_base64


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


def usage_body(served: Served, truncated_tokens: int) -> dict[str, int]:
    """Token usage of a served request."""
    tokens = sum(served.answer.token_counts)
    return Usage(
        prompt_tokens=tokens, total_tokens=tokens, truncated_tokens=truncated_tokens
    ).model_dump()


def metadata_response(
    body: dict[str, Any], metadata: EmbeddingMetadata, served: Served
) -> JSONResponse:
    """The body with the metadata fields (and fallback reasons) added, and as headers."""
    body = {**body, **metadata.model_dump()}
    if served.fallback:
        body["fallback_reasons"] = [
            {"backend": f.backend, "reason": f.reason, "kind": f.kind.value}
            for f in served.failures
        ]
    return VectorJSONResponse(body, headers=metadata_headers(metadata))


def openai_data(dense: np.ndarray, encoding_format: str) -> list[dict[str, Any]]:
    """The OpenAI `data` list: one embedding object per input, in order."""
    return [
        {"object": "embedding", "index": i, "embedding": vector}
        for i, vector in enumerate(encode_vectors(dense, encoding_format))
    ]


def native_data(
    served: Served,
    dense: np.ndarray,
    outputs: Sequence[OutputKind],
    encoding_format: str,
    sparse_tokens: bool,
) -> list[dict[str, Any]]:
    """The `/v1/embed` results: per item, the outputs that were asked for, in order."""
    answer = served.answer
    dense_rows = encode_vectors(dense, encoding_format) if OutputKind.DENSE in outputs else None
    results = []
    for i in range(dense.shape[0]):
        result: dict[str, Any] = {"index": i}
        if dense_rows is not None:
            result["dense"] = dense_rows[i]
        if OutputKind.SPARSE in outputs and answer.sparse is not None:
            result["sparse"] = sparse_body(answer.sparse[i], sparse_tokens)
        if OutputKind.MULTIVECTOR in outputs and answer.multivector is not None:
            result["multivector"] = encode_vectors(answer.multivector[i], encoding_format)
        results.append(result)
    return results


def metadata_headers(metadata: EmbeddingMetadata) -> dict[str, str]:
    """The `X-Embedding-*` headers of an answer."""
    return {
        "X-Embedding-Model": metadata.model,
        "X-Embedding-Backend": metadata.backend,
        "X-Embedding-Space-Id": metadata.space_id,
        "X-Embedding-Dimensions": str(metadata.dimensions),
        "X-Embedding-Normalized": str(metadata.normalized).lower(),
        "X-Embedding-Semantic": str(metadata.semantic).lower(),
        "X-Embedding-Fallback": str(metadata.fallback).lower(),
    }
