"""The router's tokenizers: loaded on first use, one backend at a time.

The router counts tokens to refuse over-long inputs before any replica sees them. A
tokenizer that cannot load (its model folder is not mounted yet) fails that backend
only: the router starts, the model's chain validates with the next backend whose
tokenizer loads, and the failed one is tried again after a pause, so it comes back
when its folder does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from embedserve.backend import Backend
from embedserve.config import EmbedServeConfig
from embedserve.deployments.backend_loading import load_cause
from embedserve.errors import AllBackendsFailed

logger = logging.getLogger("ray.serve")

# How long a tokenizer that failed to load is not tried again.
RETRY_AFTER_S = 5.0


class TokenizerUnavailable(AllBackendsFailed):
    """A backend's tokenizer did not load; the message says why in one line. A route
    that needs that one tokenizer (TEI's `/tokenize`) answers 503 with it."""

    code = "tokenizer_unavailable"


class Tokenizers:
    """Each configured backend's tokenizer, loaded when first needed."""

    def __init__(self, config: EmbedServeConfig) -> None:
        self._config = config
        self._loaded: set[str] = set()
        self._failed: dict[str, tuple[str, float]] = {}  # backend: (cause, when)

    def get(self, backend: str) -> Backend:
        """The backend with its tokenizer loaded, ready to count tokens.

        Raises:
            TokenizerUnavailable: the tokenizer did not load (now, or a moment ago).
        """
        instance = self._config.backend(backend)
        if backend in self._loaded:
            return instance
        cause, failed_at = self._failed.get(backend, ("", 0.0))
        if time.monotonic() - failed_at < RETRY_AFTER_S:
            raise TokenizerUnavailable(cause, headers={"Retry-After": "1"})
        try:
            instance.load_tokenizer()
        except Exception as exc:  # any cause fails this backend only
            cause = f"the tokenizer of backend {backend} did not load: {load_cause(exc)}"
            if backend not in self._failed:
                logger.warning(cause)
            self._failed[backend] = (cause, time.monotonic())
            raise TokenizerUnavailable(cause, headers={"Retry-After": "1"}) from None
        self._failed.pop(backend, None)
        self._loaded.add(backend)
        return instance

    def first_loadable(self, backends: Sequence[str]) -> tuple[str | None, dict[str, str]]:
        """The first of `backends` whose tokenizer loads, and why those before it failed."""
        failures: dict[str, str] = {}
        for backend in backends:
            try:
                self.get(backend)
            except TokenizerUnavailable as exc:
                failures[backend] = exc.message
                continue
            return backend, failures
        return None, failures
