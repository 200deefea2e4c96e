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


def test_rayservice_keeps_its_gcs_state_in_the_redis_of_redis_yaml() -> None:
    """GCS fault tolerance: the RayService's Redis address and password Secret are the
    Service and Secret that kuberay/redis.yaml runs Redis with."""
    service = yaml.safe_load((CLUSTER / "kuberay/rayservice.yaml").read_text())
    options = service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    redis = {
        doc["kind"]: doc for doc in yaml.safe_load_all((CLUSTER / "kuberay/redis.yaml").read_text())
    }

    host, _, port = options["redisAddress"].partition(":")
    assert host == redis["Service"]["metadata"]["name"]
    assert int(port) == redis["Service"]["spec"]["ports"][0]["port"]
    (container,) = redis["Deployment"]["spec"]["template"]["spec"]["containers"]
    (password,) = [e for e in container["env"] if e["name"] == "REDIS_PASSWORD"]
    assert password["valueFrom"] == options["redisPassword"]["valueFrom"]
    assert "$(REDIS_PASSWORD)" in container["args"] and "--appendonly" in container["args"]
    claim = redis["Deployment"]["spec"]["template"]["spec"]["volumes"][0]
    assert (
        claim["persistentVolumeClaim"]["claimName"]
        == redis["PersistentVolumeClaim"]["metadata"]["name"]
    )
