"""The router deployment: the HTTP ingress of embedserve.

It builds, per replica, the pieces the HTTP app serves with: the API keys and the rate
limiter, the catalog of models and backends, and the engine that runs each request along
its model's fallback chain through the backend deployments' handles.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray.serve.handle import DeploymentHandle

from embedserve.config import EmbedServeConfig, parse_config
from embedserve.deployments.catalog import BackendCatalog
from embedserve.deployments.engine import EmbeddingEngine
from embedserve.deployments.http import create_http_app
from embedserve.runtime.tracing import setup_tracing
from embedserve.serving.auth import KeyStore, RateLimiter, load_keys


class EmbeddingRouter:
    """Routes requests to backend deployments along each model's fallback chain.

    The HTTP app is built per replica from this router (`__serve_build_asgi_app__`),
    so its limits come from the config and it can be tested without Ray.
    """

    def __init__(self, config: dict[str, Any], handles: dict[str, DeploymentHandle]) -> None:
        self._config: EmbedServeConfig = parse_config(config)
        setup_tracing(self._config.server.tracing)
        auth = self._config.server.auth
        self._keys = KeyStore(load_keys(auth.keys_env, auth.keys_file))
        limiter = RateLimiter(auth.requests_per_minute, auth.tokens_per_minute)
        self._catalog = BackendCatalog(self._config, handles)
        self._engine = EmbeddingEngine(self._config, self._catalog, handles, limiter)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_http_app(self)

    @property
    def config(self) -> EmbedServeConfig:
        """The validated configuration this router serves."""
        return self._config

    @property
    def keys(self) -> KeyStore:
        """The API keys this router accepts (none: authentication is off)."""
        return self._keys

    @property
    def catalog(self) -> BackendCatalog:
        """The models' chains and what the backends say of themselves."""
        return self._catalog

    @property
    def engine(self) -> EmbeddingEngine:
        """The engine every embedding route calls."""
        return self._engine
