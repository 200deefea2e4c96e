"""`embedserve build-config`: the Serve config `serve deploy` and KubeRay accept, no Ray."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from ray._common.utils import import_attr
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve._private.build_app import build_app as build_serve_app
from ray.serve._private.deploy_utils import get_app_code_version
from ray.serve.deployment import deployment_to_schema
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema
from ray.serve.scripts import convert_args_to_dict

from embedserve.cli.main import main
from embedserve.config import load_config, parse_config
from embedserve.deployments.app import APP_NAME, AppArgs, app_builder, build_app
from embedserve.deployments.serve_config import (
    IMPORT_PATH,
    rayservice_manifest,
    serve_deploy_config,
    to_yaml,
)

REPO = Path(__file__).resolve().parents[2]
GPU_BACKEND: dict[str, Any] = {
    "kind": "hash",
    "options": {"dimensions": 64},
    "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.01, "max_batch_tokens": 2048},
    "autoscaling": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 3},
    "resources": {"num_cpus": 0.5, "num_gpus": 0.25},
    "max_ongoing_requests": 16,
}
CPU_BACKEND: dict[str, Any] = {
    "kind": "hash",
    "options": {"dimensions": 64},
    "resources": {"num_cpus": 1, "resources": {"cpu_pool": 0.01}},
}
CONFIG: dict[str, Any] = {
    "server": {"port": 8100, "router_replicas": 2},
    "backends": {"gpu": GPU_BACKEND, "cpu": CPU_BACKEND},
    "models": {"m": {"chain": ["gpu", "cpu"]}},
}


def _deployments(deploy_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (app,) = deploy_config["applications"]
    return {d["name"]: d for d in app["deployments"]}


def test_config_is_a_valid_serve_deploy_config() -> None:
    deploy_config = serve_deploy_config(parse_config(CONFIG))

    schema = ServeDeploySchema.model_validate(deploy_config)
    (app,) = schema.applications
    assert (app.name, app.route_prefix, app.import_path) == ("embedserve", "/", IMPORT_PATH)
    assert deploy_config["http_options"] == {"host": "0.0.0.0", "port": 8100}
    assert set(app.deployment_names) == {"gpu", "cpu", "router"}


def test_backend_overrides_carry_resources_autoscaling_and_batching() -> None:
    deployments = _deployments(serve_deploy_config(parse_config(CONFIG)))

    gpu = deployments["gpu"]
    assert gpu["ray_actor_options"]["num_gpus"] == 0.25
    assert gpu["ray_actor_options"]["num_cpus"] == 0.5
    assert gpu["autoscaling_config"]["max_replicas"] == 4
    assert gpu["autoscaling_config"]["target_ongoing_requests"] == 3
    assert gpu["user_config"] == GPU_BACKEND["batching"]
    assert gpu["max_ongoing_requests"] == 16
    cpu = deployments["cpu"]
    assert cpu["ray_actor_options"]["resources"] == {"cpu_pool": 0.01}
    assert cpu["ray_actor_options"]["num_gpus"] == 0
    assert deployments["router"]["num_replicas"] == 2
    # Offline mode reaches every replica through its runtime_env.
    for deployment in deployments.values():
        env = deployment["ray_actor_options"]["runtime_env"]["env_vars"]
        assert env["HF_HUB_OFFLINE"] == "1"
    # The router's malloc arenas are capped (fragmentation, see ROUTER_ENV_VARS).
    router_env = deployments["router"]["ray_actor_options"]["runtime_env"]["env_vars"]
    assert router_env["MALLOC_ARENA_MAX"] == "2"


def test_overrides_are_what_serve_builds_of_the_app() -> None:
    """The overrides come from the options `build_app` binds its deployments with; what
    Ray's own `serve build` reads off the built app must be the same, key order included
    (the committed manifests are compared as text)."""
    for config in (
        parse_config(CONFIG),
        load_config(str(REPO / "cluster/embedserve-cluster.yaml")),
    ):
        (app,) = serve_deploy_config(config)["applications"]
        built = build_serve_app(build_app(config), name=APP_NAME)
        from_ray = [
            deployment_to_schema(d).model_dump(mode="json", exclude_unset=True)
            for d in built.deployments
        ]

        assert json.dumps(app["deployments"]) == json.dumps(from_ray)


def test_app_builder_takes_typed_args_as_serve_run_passes_them(tmp_path: Path) -> None:
    """`serve run embedserve.deployments.app:app_builder config=FILE`, as Ray resolves it:
    Ray validates the arguments into the builder's annotated `AppArgs`."""
    source = tmp_path / "embedserve.yaml"
    source.write_text(yaml.safe_dump(CONFIG))
    builder = import_attr(IMPORT_PATH)

    app = call_user_app_builder_with_args_if_necessary(
        builder, convert_args_to_dict((f"config={source}",))
    )

    assert builder is app_builder
    assert inspect.signature(builder).parameters["args"].annotation is AppArgs
    assert isinstance(app, Application)
    router_config = app._bound_deployment.init_args[0]
    assert router_config["server"]["port"] == CONFIG["server"]["port"]
    with pytest.raises(ValidationError, match="config"):
        call_user_app_builder_with_args_if_necessary(builder, {"config": 5})


def test_inline_config_rebuilds_the_same_backends_and_spaces() -> None:
    config = parse_config(CONFIG)
    (app,) = serve_deploy_config(config)["applications"]

    rebuilt = AppArgs.model_validate(app["args"]).load()
    assert set(rebuilt.backends) == {"gpu", "cpu"}
    assert rebuilt.space_id("gpu") == config.space_id("gpu")
    assert rebuilt.backends["gpu"].resources.num_gpus == 0.25
    assert rebuilt.server.router_replicas == 2


def _code_version(config: dict[str, Any]) -> str:
    (app,) = serve_deploy_config(parse_config(config))["applications"]
    return get_app_code_version(ServeApplicationSchema.model_validate(app))


def test_tunables_keep_the_code_version_so_replicas_update_in_place() -> None:
    tuned = yaml.safe_load(yaml.safe_dump(CONFIG))
    tuned["backends"]["gpu"]["batching"]["max_batch_size"] = 32
    tuned["backends"]["gpu"]["autoscaling"]["max_replicas"] = 8
    tuned["backends"]["gpu"]["max_ongoing_requests"] = 64
    other_space = yaml.safe_load(yaml.safe_dump(CONFIG))
    other_space["backends"]["gpu"]["options"]["seed"] = 1
    other_space["models"]["m"]["allow_cross_space"] = True

    assert _code_version(tuned) == _code_version(CONFIG)
    assert _code_version(other_space) != _code_version(CONFIG)


def test_config_path_is_referenced_instead_of_inlined() -> None:
    deploy_config = serve_deploy_config(parse_config(CONFIG), config_path="/etc/embedserve.yaml")

    assert deploy_config["applications"][0]["args"] == {"config": "/etc/embedserve.yaml"}


def test_rayservice_manifest_gets_a_generated_serve_config() -> None:
    template = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "embedserve"},
        "spec": {"serveConfigV2": "stale", "rayClusterConfig": {"rayVersion": "2.60.0"}},
    }
    deploy_config = serve_deploy_config(parse_config(CONFIG))

    manifest = rayservice_manifest(template, deploy_config)

    assert yaml.safe_load(manifest["spec"]["serveConfigV2"]) == deploy_config
    assert manifest["spec"]["rayClusterConfig"] == {"rayVersion": "2.60.0"}
    assert "serveConfigV2: |" in to_yaml(manifest)  # a literal block, as people write it
    with pytest.raises(ValueError, match="RayService"):
        rayservice_manifest({"kind": "RayCluster", "spec": {}}, deploy_config)


def test_cli_writes_the_config(tmp_path: Path) -> None:
    source = tmp_path / "embedserve.yaml"
    source.write_text(yaml.safe_dump(CONFIG))
    output = tmp_path / "serve.yaml"

    status = main(
        ["build-config", str(source), "--name", "emb", "--port", "9000", "-o", str(output)]
    )

    assert status == 0
    written = yaml.safe_load(output.read_text())
    assert written["applications"][0]["name"] == "emb"
    assert written["http_options"]["port"] == 9000
    ServeDeploySchema.model_validate(written)


def test_committed_kuberay_manifest_is_generated_from_the_cluster_config(tmp_path: Path) -> None:
    """cluster/kuberay/rayservice.yaml must be what build-config makes of its inputs."""
    generated = tmp_path / "rayservice.yaml"
    template = REPO / "cluster/kuberay/rayservice.template.yaml"
    config = REPO / "cluster/embedserve-cluster.yaml"

    main(["build-config", str(config), "--rayservice", str(template), "-o", str(generated)])

    committed = (REPO / "cluster/kuberay/rayservice.yaml").read_text()
    assert generated.read_text() == committed, "stale: regenerate it (see cluster/README.md)"
