"""`embedserve serve`: refuse a busy port, start or join Ray, deploy the app, print what
a user needs (URLs, each backend's state, how to reach the CLI and the dashboard), and
stop cleanly on Ctrl-C or SIGTERM.

Ray and the deployments are imported inside the handler, so `embedserve --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import sys
import sysconfig
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedserve import __version__
from embedserve.cli.ray_auth import refuse_stale_ray_address, use_local_ray_auth, use_ray_token_auth
from embedserve.config import EmbedServeConfig, load_config
from embedserve.runtime.ingress import IngressPlan, plan_ingress, ray_processes_env

if TYPE_CHECKING:
    from embedserve.deployments.status import DeploymentInfo, ReplicaCanary


def add_serve_verb(verbs: Any) -> None:
    """Add `serve` to the `embedserve` command's verbs."""
    serve_parser = verbs.add_parser("serve", help="start the server")
    serve_parser.add_argument("--config", help="config file (default: the bundled config)")
    serve_parser.add_argument("--address", help="join this Ray cluster instead of starting one")
    serve_parser.add_argument("--host", help="HTTP host (default: from config)")
    serve_parser.add_argument("--port", type=int, help="HTTP port (default: from config)")
    serve_parser.add_argument(
        "--ingress",
        choices=["auto", "direct", "proxy"],
        help="how HTTP reaches the router (default: server.ingress of the config)",
    )
    serve_parser.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Start (or join) Ray, deploy the app, print what a user needs, run until Ctrl-C."""
    config = load_config(args.config)
    overrides = {"host": args.host, "port": args.port, "ingress": args.ingress}
    server = config.server.model_copy(
        update={key: value for key, value in overrides.items() if value is not None}
    )
    config = config.model_copy(update={"server": server})
    ingress = plan_ingress(server, starts_ray=not args.address)
    # Before Ray is imported: it reads the auth mode and Serve's switches once.
    if args.address:
        refuse_stale_ray_address(args.address)
        use_ray_token_auth()
    else:
        _refuse_busy_port(server.host, server.port)
        use_local_ray_auth()
    import ray
    from ray import serve

    from embedserve.deployments.app import APP_NAME, build_app
    from embedserve.deployments.grafana import install_dashboard

    # Without --address, a Ray of our own ("local"), never a cluster that happens to run here.
    with ray_processes_env(ingress.env):
        context = ray.init(
            address=args.address or "local",
            include_dashboard=True,
            namespace="embedserve",
            logging_level=logging.WARNING,
        )
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # this process's Serve calls
    _quiet_worker_output()
    # After ray.init, which installs handlers of its own; a Ctrl-C during the deploy
    # then still ends in the clean shutdown below.
    stop = _StopRequest()
    serve.start(http_options={"host": server.host, "port": ingress.proxy_port})
    print(f"deploying {len(config.backends)} backends, {len(config.models)} models ...", flush=True)
    serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
    # Into the folder Ray's Grafana provisioning reads (on the head node); Ray's dashboard
    # process has created it by now.
    install_dashboard(context.address_info["session_dir"])
    print(_ready_banner(config, context, ingress, joined=bool(args.address)), flush=True)
    while not stop.requested:
        time.sleep(0.5)
    print("shutting down ...", flush=True)
    # Drains the app's replicas and leaves a joined cluster's other apps running; a local
    # Ray then stops with ray.shutdown. (serve.shutdown would end with Ray printing that
    # the controller's own shutdown call failed: the controller kills itself inside it.)
    serve.delete(APP_NAME)
    ray.shutdown()
    return 0


class PortInUse(Exception):
    """The HTTP port `serve` would listen on is taken by another process."""


def _refuse_busy_port(host: str, port: int) -> None:
    """Refuse a port another process listens on, before starting Ray.

    Ray Serve's proxy binds its port with SO_REUSEPORT, so a second proxy on it would start
    and silently split the traffic with the first. A connection finds any listener on this
    host's address; a bind (without SO_REUSEPORT) finds one on another of its addresses.
    """
    probe = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        socket.create_connection((probe, port), timeout=2).close()
    except OSError:
        pass
    else:
        raise PortInUse(_port_in_use(host, port, "something answers there"))
    family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind) as sock:
        # As uvicorn does: connections of a server stopped a moment ago do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise PortInUse(_port_in_use(host, port, exc.strerror or str(exc))) from None


def _port_in_use(host: str, port: int, why: str) -> str:
    """The one line that refuses the port."""
    return (
        f"port {port} on {host} is in use ({why}): another embedserve serve or another "
        "program listens there; stop it, or choose another port with --port"
    )


# Worker output that `serve` keeps off its console (Ray's log files keep all of it): INFO
# and DEBUG lines in Serve's, Ray's Python and Ray's C++ log formats, model-loading
# progress bars, and a warning Ray Serve 2.60 gives at every deploy that asks nothing of
# the user.
_QUIET_LINE = re.compile(
    r"^(?:DEBUG|INFO) \d{4}-\d\d-\d\d "
    r"|^\d{4}-\d\d-\d\d [\d:,.]+\s+(?:DEBUG|INFO) "
    r"|^\[\d{4}-\d\d-\d\d [\d:,.]+ [DI] "
    r"|\d+%\|"
    r"|Cannot deregister autoscaling state for deployment"  # a deployment never registered
    # The rest of Serve's INFO message listing the throughput mode's switches.
    r"|^  • |^$"
)


def _quiet_worker_output() -> None:
    """Print Ray workers' warnings, errors and unlevelled output (tracebacks, prints) on
    this console, without their INFO lines and progress bars.

    Ray has no public filter for what `log_to_driver` prints, so this replaces the handler
    `ray.init` registers on its worker-output dispatcher (the names are private:
    tests/unit/test_cli.py fails when they change).
    """
    from ray._private import worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    def print_shown(batch: dict) -> None:
        lines = [line for line in batch.get("lines", []) if not _QUIET_LINE.search(line)]
        if lines:
            worker.print_to_stdstream({**batch, "lines": lines}, ignore_prefix=False)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", print_shown)


def _ready_banner(
    config: EmbedServeConfig, context: Any, ingress: IngressPlan, joined: bool
) -> str:
    """The URLs, each backend's state, how to run the CLI, where the logs are and how to
    sign in to the dashboard; `context` is what `ray.init` returned."""
    from ray.serve.context import _get_global_client

    from embedserve.deployments.app import APP_NAME
    from embedserve.deployments.status import collect_status

    # Through the proxies, their own options: a cluster whose Serve was started before
    # keeps its port.
    http = _get_global_client().http_config
    url = f"http://{http.host}:{ingress.port if ingress.direct else http.port}"
    lines = [
        f"embedserve {__version__} ready (Ctrl-C stops it)",
        f"  API:       {url}/v1/embeddings",
        f"  models:    {url}/v1/models",
        f"  docs:      {url}/docs",
    ]
    if ingress.direct:
        lines.append(
            f"  ingress:   the router answers on port {ingress.port} itself (Ray Serve "
            f"direct ingress; Serve's proxy is on port {ingress.proxy_port})"
        )
    if context.dashboard_url:
        dashboard = f"http://{context.dashboard_url}"
        lines.append(f"  dashboard: {dashboard}{_dashboard_sign_in(dashboard)}")
    status = collect_status()
    # Its describe calls made handles whose metrics threads would outlive ray.shutdown and
    # then start or join a Ray of their own (Ray's auto-init), printing a traceback.
    _get_global_client().shutdown_cached_handles()
    app = next(a for a in status.applications if a.name == APP_NAME)
    deployments = {deployment.name: deployment for deployment in app.deployments}
    for name, backend in config.backends.items():
        state = _backend_state(deployments[name], status.canaries)
        lines.append(f"  backend {name} ({backend.kind}): {state}")
    status_command = f"embedserve status --address {context.address_info['gcs_address']}"
    if sysconfig.get_path("scripts") not in os.environ.get("PATH", "").split(os.pathsep):
        # `make run` runs .venv/bin/embedserve: a new shell has neither it nor `ray`.
        status_command = f"source {Path(sys.prefix, 'bin', 'activate')}; {status_command}"
    lines.append(f"  CLI:       {status_command}")
    where = " on each node" if joined else ""
    lines.append(
        f"  logs:      {context.address_info['session_dir']}/logs{where} "
        "(Ray's and Serve's; this console shows only warnings and errors)"
    )
    return "\n".join(lines)


def _dashboard_sign_in(dashboard: str) -> str:
    """How to sign in, when the dashboard asks for Ray's token (its own answer)."""
    import httpx

    try:
        mode = httpx.get(f"{dashboard}/api/authentication_mode", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return ""
    if mode.get("authentication_mode") != "token":
        return ""
    return " (asks for Ray's token: `ray get-auth-token` prints it; ~/.ray/auth_token)"


def _backend_state(deployment: DeploymentInfo, canaries: dict[str, ReplicaCanary]) -> str:
    """`HEALTHY, 1 RUNNING, available, canary passed`, or what is wrong."""
    states = ", ".join(f"{n} {s}" for s, n in sorted(deployment.replica_states.items()))
    parts = [deployment.status, states or "no replicas"]
    if deployment.message:
        parts.append(deployment.message)
    if deployment.backend is not None:
        backend = deployment.backend
        parts.append("available" if backend.available else f"unavailable: {backend.reason}")
    checks = [canaries[r.replica_id] for r in deployment.replicas if r.replica_id in canaries]
    parts += sorted({f"canary {check.outcome}" for check in checks if check.problem is None})
    parts += sorted({f"canary FAILED: {check.problem}" for check in checks if check.problem})
    return ", ".join(parts)


class _StopRequest:
    """Set by Ctrl-C or SIGTERM. A plain flag: `threading.Event.set()` in a signal handler
    can deadlock on the event's own lock while the main thread is inside `wait()` (seen
    under `timeout 300 embedserve serve`: neither SIGINT nor SIGTERM stopped it)."""

    def __init__(self) -> None:
        self.requested = False
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._request)

    def _request(self, *_: object) -> None:
        self.requested = True
