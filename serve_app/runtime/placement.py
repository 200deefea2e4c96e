"""Where and how a backend's processes run: their Ray actor options and environment.

A Serve replica and a bulk encoder actor of the same backend get the same options, so
a job embeds on the resources (and in the offline mode) the server would.
"""

from __future__ import annotations

from typing import Any

from embedserve.config import BackendConfig, EmbedServeConfig

HF_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def replica_env_vars(config: EmbedServeConfig) -> dict[str, str]:
    """Environment of every replica: Hugging Face offline mode when the config is offline.

    Args:
        config: the validated embedserve config.

    Returns:
        Environment variables to set in every process that runs a backend.
    """
    return dict(HF_OFFLINE_ENV) if config.offline else {}


def actor_options(backend: BackendConfig, env_vars: dict[str, str]) -> dict[str, Any]:
    """Ray actor options of a backend's replicas (fractional GPUs allowed).

    Args:
        backend: the backend's config; its `resources` section is what counts.
        env_vars: environment for the actors (`replica_env_vars`); the backend's own
            `runtime_env.env_vars` win over it.

    Returns:
        Options for `ray.remote`, Serve's `ray_actor_options` or Ray Data's actor pool.
    """
    resources = backend.resources
    options: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}
    if resources.memory is not None:
        options["memory"] = resources.memory
    if resources.resources:
        options["resources"] = dict(resources.resources)
    runtime_env = dict(resources.runtime_env)
    if env_vars:
        # The configured env_vars win: a pinned replica may need its own settings.
        runtime_env["env_vars"] = {**env_vars, **runtime_env.get("env_vars", {})}
    if runtime_env:
        options["runtime_env"] = runtime_env
    return options
