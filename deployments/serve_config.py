"""The declarative Serve config of an embedserve config (`embedserve build-config`).

`serve deploy`, the dashboard's REST API and KubeRay's `serveConfigV2` take a Serve
config: applications named by an import path and arguments, plus per-deployment
overrides. The overrides are the `Deployment.options` that `build_app` binds its
deployments with, so the config deploys exactly what `embedserve serve` would.
"""

from __future__ import annotations

from typing import Any

import yaml
from ray.serve.schema import DeploymentSchema, ServeDeploySchema

from embedserve.config import EmbedServeConfig
from embedserve.deployments.app import APP_NAME, Router, backend_options, router_options

IMPORT_PATH = "embedserve.deployments.app:app_builder"
# A Serve config is for a cluster: its proxies must accept connections from other hosts.
CLUSTER_HTTP_HOST = "0.0.0.0"
# Backend settings that travel in the deployment overrides (batching as user_config)
# rather than in the app's arguments.
_RUNTIME_TUNABLE = {"batching", "autoscaling", "max_ongoing_requests", "max_queued_requests"}


def inline_config(config: EmbedServeConfig) -> dict[str, Any]:
    """The config as the app builder's inline `config` argument.

    Only keys the file set are kept, and the backends' run-time tunables (batching,
    autoscaling, request limits) are left out: Serve hashes the arguments into the code
    version, so keeping them out lets a regenerated config that changes only tunables
    update replicas in place (`reconfigure`) instead of replacing them. The tunables
    travel in the deployment overrides, which take precedence anyway.
    """
    data = config.model_dump(mode="json", exclude_unset=True)
    for backend in data["backends"].values():
        for key in _RUNTIME_TUNABLE:
            backend.pop(key, None)
    return data


def deployment_overrides(config: EmbedServeConfig) -> list[dict[str, Any]]:
    """Per-deployment options (autoscaling, actor options, user_config, ...) of the app.

    Args:
        config: the validated embedserve config.

    Returns:
        One Serve `DeploymentSchema` mapping per deployment, the backends' in config
        order and then the router's, with only the options `build_app` sets.
    """
    options = [(name, backend_options(config, name)) for name in config.backends]
    options.append((Router.name, router_options(config)))
    return [
        DeploymentSchema(name=name, **deployment).model_dump(mode="json", exclude_unset=True)
        for name, deployment in options
    ]


def serve_deploy_config(
    config: EmbedServeConfig,
    *,
    config_path: str | None = None,
    app_name: str = APP_NAME,
    route_prefix: str = "/",
    host: str = CLUSTER_HTTP_HOST,
    port: int | None = None,
) -> dict[str, Any]:
    """The Serve config that deploys `config`, validated by Ray's `ServeDeploySchema`.

    Args:
        config: the validated embedserve config.
        config_path: name this file in the app's arguments instead of carrying the config
            inline; it must then exist at this path on every node.
        app_name: the Serve application name.
        route_prefix: where the application's HTTP routes are mounted.
        host: the HTTP host of Serve's proxies.
        port: the HTTP port of Serve's proxies (default: `server.port` of the config).

    Returns:
        A JSON-serialisable mapping in the format `serve deploy` and KubeRay accept.
    """
    deploy_config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port or config.server.port},
        "applications": [
            {
                "name": app_name,
                "route_prefix": route_prefix,
                "import_path": IMPORT_PATH,
                "args": {"config": config_path or inline_config(config)},
                "deployments": deployment_overrides(config),
            }
        ],
    }
    ServeDeploySchema.model_validate(deploy_config)
    return deploy_config


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings as literal blocks, as hand-written manifests do."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_BlockDumper.add_representer(str, _represent_str)


def to_yaml(document: Any) -> str:
    """YAML in the config's own key order, multi-line strings as literal blocks."""
    return yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, width=100)


def rayservice_manifest(template: dict[str, Any], deploy_config: dict[str, Any]) -> dict:
    """A KubeRay `RayService` manifest: the template with `spec.serveConfigV2` generated.

    Raises:
        ValueError: the template is not a RayService.
    """
    if template.get("kind") != "RayService" or not isinstance(template.get("spec"), dict):
        raise ValueError("the template is not a KubeRay RayService manifest (kind: RayService)")
    rest = {k: v for k, v in template["spec"].items() if k != "serveConfigV2"}
    return {**template, "spec": {"serveConfigV2": to_yaml(deploy_config), **rest}}
