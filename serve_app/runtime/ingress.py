"""How HTTP reaches the router deployment.

Through Ray Serve's proxy, a request crosses two processes before the router runs: the
proxy parses HTTP and hands the request to the router replica as an actor call. With Ray
Serve's direct ingress the router replica runs its own HTTP server and answers on the
configured port itself, so a request costs a hop and a process less; Ray's
throughput-optimized mode, which turns direct ingress on, also sends the router's calls
to the backend replicas over gRPC and runs user code on each replica's event loop. On 2
cores, 1-text MiniLM requests of ~64 tokens at concurrency 8: 91 docs/s against 56
through the proxy, the proxy and router together 2.0 CPU-ms per request against 10.3
(tests/benchmarks/bench_throughput.py measures both side by side).

Ray reads these switches from the environment of its processes when they start, so
direct ingress is only possible on a Ray that `embedserve serve` starts itself.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from embedserve.config import ConfigError, ServerConfig


class IngressUnavailable(ConfigError):
    """`ingress: direct` was asked for where it cannot be set up."""


@dataclass(frozen=True)
class IngressPlan:
    """Where users connect, and where Ray Serve's proxy listens."""

    direct: bool
    port: int  # the configured port: what users connect to
    proxy_port: int  # Serve's proxy: `port` itself unless direct

    @property
    def env(self) -> dict[str, str]:
        """The environment Ray's processes need for this plan (empty for the proxy)."""
        if not self.direct:
            return {}
        return {
            **THROUGHPUT_MODE_ENV,
            # The range Serve takes direct-ingress ports from: exactly the configured one.
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(self.port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(self.port + 1),
        }


# Ray Serve's throughput-optimized mode, as `serve` runs it.
THROUGHPUT_MODE_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # No load balancer in front has to notice a stopping router: without this, each stop
    # (Ctrl-C, a redeploy) waits 30 s for one.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
    # A released port waits 150 s before reuse (for HAProxy's stale routes); a router
    # replaced on its node would wait as long for its port.
    "RAY_SERVE_PORT_QUARANTINE_S": "0",
    # The throughput mode keeps replicas' logs off stderr; `serve` shows their warnings
    # and errors on its console, so they stay on.
    "RAY_SERVE_LOG_TO_STDERR": "1",
}


def plan_ingress(server: ServerConfig, starts_ray: bool) -> IngressPlan:
    """The ingress `server.ingress` asks for, on a Ray this command starts or joins.

    Raises:
        IngressUnavailable: `ingress: direct` on a Ray started before this command, or
            with several router replicas.
    """
    if server.ingress == "direct" and not starts_ray:
        raise IngressUnavailable(
            "ingress: direct needs a Ray that `embedserve serve` starts itself (Ray reads "
            "the switch when its processes start); on a running cluster set ingress: "
            "proxy, or start the cluster with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 in its "
            "environment and send requests to the router's direct-ingress port"
        )
    if server.ingress == "direct" and server.router_replicas > 1:
        # The router binds `port` without port reuse: a second replica would find it taken.
        raise IngressUnavailable(
            f"ingress: direct serves `port` from one router replica, and router_replicas "
            f"is {server.router_replicas}: set router_replicas: 1, or ingress: proxy for "
            "several router replicas behind Ray Serve's proxy"
        )
    direct = server.ingress == "direct" or (
        server.ingress == "auto" and starts_ray and server.router_replicas == 1
    )
    proxy_port = free_port(server.host) if direct else server.port
    return IngressPlan(direct, server.port, proxy_port)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `host` (Serve's proxy's, a test server's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def ray_processes_env(env: dict[str, str]) -> Iterator[None]:
    """Ray's processes started within (by `ray.init`) inherit `env`, and load embedserve's
    runtime_env plugin (`embedserve.runtime.overlay_env`); this process keeps Serve's
    defaults.

    Ray Serve reads its switches when it is imported, so it is imported first: a driver
    in the throughput mode would refuse its own handle calls outside an event loop
    (`embedserve serve` asks its replicas for their state that way).
    """
    import ray.serve  # noqa: F401

    from embedserve.runtime.overlay_env import registered_env

    env = {**env, **registered_env()}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
