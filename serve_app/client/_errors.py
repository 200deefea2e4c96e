"""Typed errors of the client, one per kind of answer the server gives."""

from __future__ import annotations

from typing import Any


class EmbedServeAPIError(Exception):
    """The server answered with an error: its status, and the OpenAI error envelope's
    `code`, `type`, `param` and `message`."""

    def __init__(self, status_code: int, body: Any, retry_after_s: float | None = None) -> None:
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        self.status_code = status_code
        self.body = body
        self.message: str = str(error.get("message") or body)
        self.code: str | None = error.get("code")
        self.type: str | None = error.get("type")
        self.param: str | None = error.get("param")
        self.retry_after_s = retry_after_s
        super().__init__(f"{status_code} {self.code or 'error'}: {self.message}")


class BadRequestError(EmbedServeAPIError):
    """400 or 422: the request is invalid (`param` names the field or item)."""


class AuthenticationError(EmbedServeAPIError):
    """401: a missing or unknown API key."""


class ModelNotFoundError(EmbedServeAPIError):
    """404: the server serves no model of that name."""


class RequestTooLargeError(EmbedServeAPIError):
    """413: one item, or the body, is over the server's limits."""


class RateLimitError(EmbedServeAPIError):
    """429: the key's rate limit, still reached when the retry budget ran out."""


class ServiceUnavailableError(EmbedServeAPIError):
    """503: every backend failed or is overloaded, still when the retry budget ran out."""


class GatewayTimeoutError(EmbedServeAPIError):
    """504: the backends or the request ran past the server's deadline."""


class ServerError(EmbedServeAPIError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[EmbedServeAPIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: ModelNotFoundError,
    413: RequestTooLargeError,
    422: BadRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


def api_error(
    status_code: int, body: Any, retry_after_s: float | None = None
) -> EmbedServeAPIError:
    """The typed error of a status code (unknown 4xx: the base class; 5xx: `ServerError`)."""
    default = ServerError if status_code >= 500 else EmbedServeAPIError
    return _BY_STATUS.get(status_code, default)(status_code, body, retry_after_s)
