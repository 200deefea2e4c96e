"""How `embedserve serve` lets HTTP reach the router: the plan for each `server.ingress`,
the environment Ray's processes get, and this process left as it was."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from embedserve.config import ConfigError, ServerConfig
from embedserve.runtime.ingress import IngressUnavailable, plan_ingress


def server(**fields: object) -> ServerConfig:
    return ServerConfig.model_validate({"host": "127.0.0.1", "port": 8123, **fields})


def test_auto_is_direct_on_a_ray_serve_starts() -> None:
    plan = plan_ingress(server(), starts_ray=True)

    assert plan.direct
    assert plan.port == 8123
    assert plan.proxy_port != 8123
    # The proxy's port is free: nothing listens there.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", plan.proxy_port))
    assert plan.env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    # The direct-ingress port range is exactly the configured port.
    assert plan.env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "8123"
    assert plan.env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] == "8124"
    assert plan.env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "0"
    assert plan.env["RAY_SERVE_PORT_QUARANTINE_S"] == "0"


@pytest.mark.parametrize(
    ("fields", "starts_ray"),
    [
        ({"ingress": "proxy"}, True),
        ({"ingress": "auto"}, False),  # a running cluster: its Serve was started before
        ({"ingress": "auto", "router_replicas": 2}, True),
    ],
)
def test_proxy_ingress_serves_the_port_through_the_proxy(
    fields: dict[str, object], starts_ray: bool
) -> None:
    plan = plan_ingress(server(**fields), starts_ray=starts_ray)

    assert not plan.direct
    assert plan.port == plan.proxy_port == 8123
    assert plan.env == {}


def test_direct_ingress_on_a_running_cluster_is_refused_with_what_to_do() -> None:
    with pytest.raises(IngressUnavailable, match="ingress: proxy") as raised:
        plan_ingress(server(ingress="direct"), starts_ray=False)
    assert isinstance(raised.value, ConfigError)  # the CLI prints it as a config error
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED=1" in str(raised.value)


def test_direct_ingress_with_several_router_replicas_is_refused() -> None:
    with pytest.raises(IngressUnavailable, match="router_replicas is 3"):
        plan_ingress(server(ingress="direct", router_replicas=3), starts_ray=True)


def test_ray_processes_get_the_environment_and_this_process_keeps_its_own() -> None:
    # A fresh interpreter: Serve reads its switches once, when it is first imported.
    code = """
import os
from embedserve.runtime.ingress import ray_processes_env
os.environ["RAY_SERVE_LOG_TO_STDERR"] = "0"
env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_LOG_TO_STDERR": "1"}
with ray_processes_env(env):
    assert {name: os.environ.get(name) for name in env} == env
    from ray.serve._private import constants
assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ
assert os.environ["RAY_SERVE_LOG_TO_STDERR"] == "0"
# Serve was imported before the switch: this process's handles keep a loop of their own.
assert constants.RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP
assert not constants.RAY_SERVE_ENABLE_DIRECT_INGRESS
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
