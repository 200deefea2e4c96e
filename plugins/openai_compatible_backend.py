"""`openai-compatible`: a remote `/v1/embeddings` server as a backend.

OpenAI, Ollama's OpenAI route, TEI, vLLM, Infinity or another embedserve: texts are sent
in requests of at most the remote's batch size; 429 and 5xx answers, timeouts and
connection errors are retried with exponential backoff (a `Retry-After` header wins);
other 4xx answers are not retried. The API key is read from a named environment
variable in the replica, never from the config file, and never appears in a message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from embedserve import (
    Backend,
    BackendCapabilities,
    BackendOptions,
    BackendUnavailable,
    EmbeddingBatch,
    EmbedInput,
    hookimpl,
)
from embedserve.retry import retry_after_seconds

_RETRIED_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class OpenAICompatibleOptions(BackendOptions):
    """Options of the `openai-compatible` backend."""

    base_url: str = Field(description="The API root, for example `https://api.openai.com/v1`.")
    model: str = Field(description="The remote model name sent with every request.")
    revision: str | None = Field(
        default=None, description="A label for the remote model's version; part of the space id."
    )
    api_key_env: str | None = Field(
        default=None,
        description="Environment variable holding the API key (sent as a Bearer token).",
    )
    dimensions: int | None = Field(
        default=None, ge=1, description="Sent as `dimensions`; also the declared vector size."
    )
    normalized: bool = Field(
        default=True, description="Whether the remote's vectors are unit length."
    )
    max_batch_size: int = Field(
        default=256, ge=1, description="Most texts in one remote request (the remote's limit)."
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Deadline of one remote request.")
    max_retries: int = Field(default=3, ge=0, description="Retries after a 429, 5xx or timeout.")
    backoff_s: float = Field(default=0.5, ge=0, description="First retry delay; doubles per retry.")
    max_backoff_s: float = Field(default=30.0, ge=0, description="Longest wait between attempts.")


class RemoteError(RuntimeError):
    """The remote server refused or failed a request (after any retries)."""


class OpenAICompatibleBackend(Backend):
    """Embeddings from a remote OpenAI-compatible server."""

    kind = "openai-compatible"
    description = "A remote OpenAI-compatible /v1/embeddings server (OpenAI, TEI, vLLM, ...)."
    Options = OpenAICompatibleOptions
    options: OpenAICompatibleOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._client: Any = None
        self._dimensions = self.options.dimensions

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.capabilities_with(
            dimensions=self._dimensions, normalized=self.options.normalized
        )

    def space_identity(self) -> dict[str, Any]:
        # The endpoint is left out: one model behind two URLs is one space.
        return {
            "kind": self.kind,
            "model": self.options.model,
            "revision": self.options.revision,
            "dimensions": self.options.dimensions,
        }

    def load(self) -> None:
        """Read the API key and open the client; without a configured dimension, one
        probe request learns it (and proves the remote answers)."""
        import httpx

        headers = {}
        variable = self.options.api_key_env
        if variable:
            key = os.environ.get(variable)
            if not key:
                raise BackendUnavailable(
                    f"the API key variable {variable} is not set in this replica; set it "
                    "(for example in the backend's resources.runtime_env.env_vars)"
                )
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            base_url=self.options.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=self.options.timeout_s,
        )
        if self._dimensions is None:
            self._dimensions = int(self._request(["dimension probe"]).shape[1])

    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        texts = [item.text for item in inputs]
        size = self.options.max_batch_size
        parts = [self._request(texts[i : i + size]) for i in range(0, len(texts), size)]
        return EmbeddingBatch(dense=np.concatenate(parts))

    def _request(self, texts: list[str]) -> np.ndarray:
        """One remote request, retried on 429, 5xx, timeouts and connection errors."""
        body: dict[str, Any] = {
            "model": self.options.model,
            "input": texts,
            "encoding_format": "float",
        }
        if self.options.dimensions is not None:
            body["dimensions"] = self.options.dimensions
        attempt = 0
        while True:
            outcome = self._attempt(body)
            if isinstance(outcome, np.ndarray):
                if outcome.shape[0] != len(texts):
                    raise RemoteError(
                        f"the remote answered {outcome.shape[0]} vectors for {len(texts)} texts"
                    )
                return outcome
            reason, delay = outcome
            if attempt == self.options.max_retries:
                raise RemoteError(
                    f"{reason}; gave up after {attempt + 1} attempts to {self.options.model}"
                )
            backoff = self.options.backoff_s * 2**attempt
            time.sleep(min(backoff if delay is None else delay, self.options.max_backoff_s))
            attempt += 1

    def _attempt(self, body: dict[str, Any]) -> np.ndarray | tuple[str, float | None]:
        """Vectors, or why a retry may help and how long the remote asked to wait.

        Raises:
            RemoteError: an answer that retrying will not change (4xx other than 408, 409
                and 429), or one that is not an embeddings list.
        """
        import httpx

        try:
            response = self._client.post("embeddings", json=body)
        except httpx.TimeoutException:
            return f"timed out after {self.options.timeout_s:g}s", None
        except httpx.TransportError as exc:
            return f"could not reach the remote ({type(exc).__name__})", None
        if response.status_code in _RETRIED_STATUSES:
            return f"the remote answered {response.status_code}", retry_after_seconds(
                response.headers.get("retry-after")
            )
        if response.status_code >= 400:
            # Only the status and the error's code: a remote may echo inputs in messages.
            raise RemoteError(
                f"the remote refused the request: {response.status_code} {_error_code(response)}"
            )
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            return np.asarray([item["embedding"] for item in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteError(f"the remote's answer is not an embeddings list ({exc!r})") from None


def _error_code(response: Any) -> str:
    try:
        error = response.json().get("error", {})
        return str(error.get("code") or error.get("type") or "")
    except (ValueError, AttributeError):
        return ""


@hookimpl
def register_backends(register) -> None:
    """Register the `openai-compatible` backend."""
    register(OpenAICompatibleBackend)
