"""TEI's error body on TEI's routes: `{"error": "...", "error_type": "..."}` with the
status TEI gives each type (huggingface/text-embeddings-inference: `ErrorType` and
`ErrorResponse` in router/src/lib.rs, their statuses in router/src/http/server.rs).
The OpenAI and native routes keep the OpenAI envelope (`http.error_response`).
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import Scope

from embedserve.errors import (
    AllBackendsFailed,
    BackendsTimedOut,
    EmbedServeError,
    EmptyInput,
    Overloaded,
    RateLimited,
    RequestTimedOut,
)
from embedserve.serving.schemas import TeiErrorBody

# TEI answers `POST /` as `/embed` for an embedding model (InferenceClient(base_url) posts
# there) and `GET /` as `/health`.
TEI_PATHS = frozenset(
    {"/", "/embed", "/embed_sparse", "/embed_all", "/tokenize", "/info", "/health"}
)
# TEI's status per error type: `impl From<&ErrorType> for StatusCode` in server.rs.
TEI_STATUS = {
    "Unhealthy": 503,
    "Backend": 424,
    "Overloaded": 429,
    "Tokenizer": 422,
    "Validation": 413,
    "Empty": 400,
}


class TeiError(EmbedServeError):
    """An error only TEI's routes raise, of one of TEI's error types (and its status)."""

    def __init__(self, message: str, tei_type: str) -> None:
        super().__init__(message)
        self.tei_type = tei_type
        self.status_code = TEI_STATUS[tei_type]


def is_tei_route(scope: Scope) -> bool:
    """Whether the request is for one of TEI's routes (its path within the app)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path in TEI_PATHS


def tei_error(error: EmbedServeError) -> tuple[str, int]:
    """TEI's error type for an error, and the status to answer with.

    TEI answers every `Validation` error with 413; here only an input over the token limit
    is 413 for that reason. The other statuses say what is wrong, as on the OpenAI routes:
    413 too many inputs or too large a body, 400 invalid input, 422 a body that does not
    fit the schema (TEI's web framework answers 422 too), 401, 404 (an unknown model), 405.
    A deadline stays 504: TEI has none.
    """
    if isinstance(error, TeiError):
        return error.tei_type, error.status_code
    if isinstance(error, EmptyInput):
        return "Empty", TEI_STATUS["Empty"]
    if isinstance(error, Overloaded | RateLimited):
        return "Overloaded", TEI_STATUS["Overloaded"]
    if isinstance(error, BackendsTimedOut | RequestTimedOut):
        return "Backend", error.status_code
    if isinstance(error, AllBackendsFailed) or error.code == "unsupported_output":
        # TEI: inference failed, or the model lacks the route's output (not SPLADE).
        return "Backend", TEI_STATUS["Backend"]
    if error.code == "input_too_long":
        return "Validation", TEI_STATUS["Validation"]
    return "Validation", error.status_code


def tei_error_response(error: EmbedServeError) -> JSONResponse:
    """TEI's error body, `{"error", "error_type"}`, with TEI's status and the error's
    headers (Retry-After, WWW-Authenticate)."""
    error_type, status = tei_error(error)
    body = {"error": error.message, "error_type": error_type}
    return JSONResponse(body, status_code=status, headers=error.headers)


# OpenAPI declarations of the error statuses of TEI's routes.
TEI_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": TeiErrorBody, "description": description}
    for status, description in {
        400: "`Empty`: no inputs; `Validation`: invalid input (`inputs[3]` is empty...).",
        404: "`Validation`: no model of that name (`X-Embedding-Model`).",
        413: "`Validation`: too many inputs, too large a body, an input over the token limit.",
        422: "`Validation`: the body does not fit the schema; `Tokenizer`: no token list.",
        424: "`Backend`: every backend failed, or the model lacks the output.",
        429: "`Overloaded`: the backends' queues or the key's rate limit (Retry-After).",
        503: "`Unhealthy`: no backend of the model's chain can serve.",
        504: "`Backend`: the backends or the request ran past their deadline.",
    }.items()
}
