"""`embedserve serve`: refuse a busy port, start or join Ray, deploy the app, print what
a user needs (`serve_console`: URLs, each backend's state, how to reach the CLI and the
dashboard), and stop cleanly on Ctrl-C or SIGTERM; exit 1 when no model can serve (or,
with `--require-all`, when a backend failed to load) or the config cannot deploy.

Ray and the deployments are imported inside the handler, so `embedserve --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import time
from typing import Any

from embedserve.cli.ray_auth import refuse_stale_ray_address, use_local_ray_auth, use_ray_token_auth
from embedserve.cli.serve_console import (
    deploy_failure,
    deployment_messages,
    quiet_worker_output,
    ready_banner,
    serving_problem,
)
from embedserve.config import EmbedServeConfig, load_config
from embedserve.runtime.ingress import IngressPlan, plan_ingress, ray_processes_env


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
    serve_parser.add_argument(
        "--require-all",
        action="store_true",
        help="exit 1 when any backend fails to load (default: only when no model can serve)",
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

    # Without --address, a Ray of our own ("local"), never a cluster that happens to run here.
    with ray_processes_env(ingress.env):
        # A RayContext (`address_info`, `dashboard_url`); typed as its base class by Ray.
        context: Any = ray.init(
            address=args.address or "local",
            include_dashboard=True,
            namespace="embedserve",
            logging_level=logging.WARNING,
        )
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # this process's Serve calls
    quiet_worker_output()
    # After ray.init, which installs handlers of its own; a Ctrl-C during the deploy
    # then still ends in the clean shutdown below.
    stop = _StopRequest()
    serve.start(http_options={"host": server.host, "port": ingress.proxy_port})
    print(f"deploying {len(config.backends)} backends, {len(config.models)} models ...", flush=True)
    logs = f"{context.address_info['session_dir']}/logs"
    try:
        serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
    except RuntimeError as exc:  # Serve's "Deploying application ... failed: ..."
        lines = deploy_failure(exc, deployment_messages(APP_NAME), logs)
        print("\n".join(lines), file=sys.stderr, flush=True)
        exit_code = 1
    else:
        exit_code = _report_deployed(config, context, ingress, args)
    while exit_code == 0 and not stop.requested:
        time.sleep(0.5)
    print("shutting down ...", flush=True)
    # Drains the app's replicas and leaves a joined cluster's other apps running; a local
    # Ray then stops with ray.shutdown. (serve.shutdown would end with Ray printing that
    # the controller's own shutdown call failed: the controller kills itself inside it.)
    serve.delete(APP_NAME)
    ray.shutdown()
    return exit_code


def _report_deployed(
    config: EmbedServeConfig, context: Any, ingress: IngressPlan, args: argparse.Namespace
) -> int:
    """Print the banner of the deployed app; 1 when it must stop (see `serving_problem`)."""
    from embedserve.deployments.app import APP_NAME
    from embedserve.deployments.grafana import install_dashboard
    from embedserve.deployments.status import collect_status, serve_client

    # Into the folder Ray's Grafana provisioning reads (on the head node); Ray's dashboard
    # process has created it by now.
    install_dashboard(context.address_info["session_dir"])
    status = collect_status()
    # Its describe calls made handles whose metrics threads would outlive ray.shutdown and
    # then start or join a Ray of their own (Ray's auto-init), printing a traceback.
    serve_client().shutdown_cached_handles()
    app = next(a for a in status.applications if a.name == APP_NAME)
    joined = bool(args.address)
    print(ready_banner(config, context, ingress, app, status.canaries, joined), flush=True)
    problem = serving_problem(config, app, args.require_all)
    if problem is None:
        return 0
    print(problem, file=sys.stderr, flush=True)
    return 1


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
