"""The files under cluster/ are valid for the tools that read them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from embedserve.config import load_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def test_launcher_config_passes_rays_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "launcher/aws.yaml").read_text())
    validate_config(prepare_config(config))  # raises on any schema violation

    node_types = config["available_node_types"]
    assert node_types["head"]["resources"] == {"CPU": 0}
    assert node_types["gpu_worker"]["resources"]["GPU"] == 1
    assert node_types["cpu_worker"]["resources"]["cpu_pool"] == 1
    assert any("embedserve" in command for command in config["setup_commands"])


def test_cluster_config_places_gpu_and_cpu_backends_apart() -> None:
    config = load_config(CLUSTER / "embedserve-cluster.yaml")

    gpu, cpu = config.backends["minilm-gpu"], config.backends["minilm-cpu"]
    assert gpu.resources.num_gpus == 0.25 and not gpu.resources.resources
    assert cpu.resources.num_gpus == 0 and "cpu_pool" in cpu.resources.resources
    assert config.backends["hash"].resources.resources == {"cpu_pool": 0.01}
    # The CPU pool is a same-space fallback of the GPU pool: the same pinned weights.
    assert config.space_id("minilm-gpu") == config.space_id("minilm-cpu")


def test_local_script_is_valid_bash_and_documents_itself() -> None:
    script = CLUSTER / "local.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)

    assert usage.returncode == 2
    assert "cluster/local.sh start" in usage.stdout and "cluster/local.sh stop" in usage.stdout
