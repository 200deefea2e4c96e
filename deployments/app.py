"""The application builder: an embedserve config becomes a Ray Serve application.

`serve run deployments.app:app_builder config=path/to/config.yaml` works too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from ray import serve
from ray.serve import Application

from deployments.backend_deployment import BackendDeployment
from deployments.router import EmbeddingRouter
from serve_app.config import BackendConfig, EmbedServeConfig, load_config

APP_NAME = "embedserve"
Router = serve.deployment(name="router")(serve.ingress()(EmbeddingRouter))
_RUNTIME_TUNABLE = {"batching", "autoscaling", "max_ongoing_requests"}
HF_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


class AppArgs(BaseModel):
    """Arguments of `serve run deployments.app:app_builder`."""

    config: str | None = None


def replica_env_vars(config: EmbedServeConfig) -> dict[str, str]:
    """Environment of every replica: Hugging Face offline mode when the config is offline."""
    return dict(HF_OFFLINE_ENV) if config.offline else {}


def actor_options(backend: BackendConfig, env_vars: dict[str, str]) -> dict[str, Any]:
    """Ray actor options of a backend's replicas (fractional GPUs allowed)."""
    resources = backend.resources
    options: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}
    if resources.memory is not None:
        options["memory"] = resources.memory
    if resources.resources:
        options["resources"] = dict(resources.resources)
    if env_vars:
        options["runtime_env"] = {"env_vars": env_vars}
    return options


def autoscaling_options(backend: BackendConfig) -> dict[str, Any]:
    """Ray Serve's autoscaling_config from the backend's autoscaling section."""
    return backend.autoscaling.model_dump(exclude_none=True)


def build_app(config: EmbedServeConfig) -> Application:
    """One deployment per configured backend, and the router ingress holding their handles."""
    env_vars = replica_env_vars(config)
    backends = {
        name: BackendDeployment.options(
            name=name,
            ray_actor_options=actor_options(backend, env_vars),
            autoscaling_config=autoscaling_options(backend),
            max_ongoing_requests=backend.ongoing_requests_limit,
            user_config=backend.batching.model_dump(),
        ).bind(name, backend.model_dump(mode="json"))
        for name, backend in config.backends.items()
    }
    router_actor_options: dict[str, Any] = {"num_cpus": config.server.router_num_cpus}
    if env_vars:
        router_actor_options["runtime_env"] = {"env_vars": env_vars}
    return Router.options(
        num_replicas=config.server.router_replicas,
        ray_actor_options=router_actor_options,
    ).bind(config.model_dump(mode="json"), backends)


def app_builder(args: dict[str, Any]) -> Application:
    """`serve run` entry point: builds the app from `config=PATH` (default: bundled)."""
    return build_app(load_config(AppArgs.model_validate(args).config))
