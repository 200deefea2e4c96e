"""Errors with an HTTP status, rendered in the OpenAI error envelope.

`{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`
"""

from __future__ import annotations

from typing import Any

ECHO_LIMIT = 100


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """What an error message may echo of client input: `text`, or its first `limit`
    characters, `...` and its length (a megabyte model name must not come back whole).

    Args:
        text: a model name, field name or other text from the request.
        limit: the most characters of it to keep.
    """
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class EmbedServeError(Exception):
    """An error a client should see, with an honest HTTP status."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.code
        self.headers = headers or {}
        self.extra = extra or {}

    def envelope(self) -> dict[str, Any]:
        """The OpenAI error envelope for this error."""
        body = {
            "message": self.message,
            "type": self.error_type,
            "param": self.param,
            "code": self.code,
        }
        return {"error": {**body, **self.extra}}


class InvalidRequest(EmbedServeError):
    """The request is well-formed JSON but asks for something impossible (400)."""

    status_code = 400
    error_type = "invalid_request_error"


class EmptyInput(InvalidRequest):
    """The request has no items to embed (400): an empty list."""


class RequestValidationFailed(InvalidRequest):
    """The request body does not match the schema (422)."""

    status_code = 422
    code = "validation_error"


class Unauthorized(EmbedServeError):
    """No API key, or an unknown one (401)."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class RateLimited(EmbedServeError):
    """A key's requests or tokens per minute are used up (429 with Retry-After)."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class PayloadTooLarge(InvalidRequest):
    """The request body or item count is over the configured limit (413)."""

    status_code = 413
    code = "payload_too_large"


class ModelNotFound(InvalidRequest):
    """No public model of that name is configured (404)."""

    status_code = 404
    code = "model_not_found"


class AllBackendsFailed(EmbedServeError):
    """Every backend of a model's fallback chain failed (503)."""

    status_code = 503
    error_type = "service_unavailable"
    code = "all_backends_failed"


class Overloaded(AllBackendsFailed):
    """Every backend of a model's chain is at its queue bound (503 with Retry-After)."""

    code = "overloaded"


class BackendsTimedOut(AllBackendsFailed):
    """Every backend of a model's fallback chain ran past its deadline (504)."""

    status_code = 504
    error_type = "timeout"
    code = "backend_timeout"


class RequestTimedOut(EmbedServeError):
    """The request ran past the server's per-request deadline (504)."""

    status_code = 504
    error_type = "timeout"
    code = "request_timeout"
