"""A backend's `resources.runtime_env` reaches Ray: the deployment options of the built
app and the generated Serve config carry it, merged with the offline env vars. This is
what lets a `nomic` replica run transformers<5 (its overlay environment) next to
transformers-5 replicas."""

from __future__ import annotations

from typing import Any

from embedserve.config import parse_config
from embedserve.deployments.app import build_app
from embedserve.deployments.serve_config import serve_deploy_config

PINNED = {
    "embedserve_overlay": ["transformers>=4.44,<5", "einops"],
    "env_vars": {"NOMIC_MODE": "pinned", "HF_HUB_OFFLINE": "0"},
}
CONFIG: dict[str, Any] = {
    "server": {"offline": True},
    "backends": {
        "pinned": {
            "kind": "hash",
            "options": {"dimensions": 64},
            "resources": {"runtime_env": PINNED},
        },
        "plain": {"kind": "hash", "options": {"dimensions": 64}},
    },
    "models": {"m": {"chain": ["pinned", "plain"]}},
}


def deployment_options(app: Any) -> dict[str, dict[str, Any]]:
    """Each backend deployment's ray_actor_options, read from the built application."""
    backends = app._bound_deployment.init_args[1]  # the router's handles, as bound
    return {name: bound._bound_deployment.ray_actor_options for name, bound in backends.items()}


def test_runtime_env_reaches_the_deployment_options() -> None:
    options = deployment_options(build_app(parse_config(CONFIG)))
    pinned = options["pinned"]["runtime_env"]
    assert pinned["embedserve_overlay"] == PINNED["embedserve_overlay"]
    # The offline variables are added; the backend's own settings win over them.
    assert pinned["env_vars"]["TRANSFORMERS_OFFLINE"] == "1"
    assert pinned["env_vars"]["HF_HUB_OFFLINE"] == "0"
    assert pinned["env_vars"]["NOMIC_MODE"] == "pinned"
    assert "embedserve_overlay" not in options["plain"]["runtime_env"]


def test_runtime_env_is_in_the_generated_serve_config() -> None:
    document = serve_deploy_config(parse_config(CONFIG))
    [application] = document["applications"]
    deployments = {d["name"]: d for d in application["deployments"]}
    pinned = deployments["pinned"]["ray_actor_options"]["runtime_env"]
    assert pinned["embedserve_overlay"] == PINNED["embedserve_overlay"]
