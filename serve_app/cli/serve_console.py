"""What `embedserve serve` prints: the ready banner (URLs, each backend's state, a failed
backend's cause and log), why it stops when no model can serve or a config cannot deploy
(a few lines and where the logs are, never Ray's tracebacks), and which of the Ray
workers' output reaches the console.
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedserve import __version__
from embedserve.config import EmbedServeConfig
from embedserve.runtime.ingress import IngressPlan

if TYPE_CHECKING:
    from embedserve.deployments.status import ApplicationInfo, DeploymentInfo, ReplicaCanary

# Worker output that `serve` keeps off its console (Ray's log files keep all of it): INFO
# and DEBUG lines in Serve's, Ray's Python and Ray's C++ log formats, model-loading
# progress bars, a warning Ray Serve 2.60 gives at every deploy that asks nothing of the
# user, and the body of tracebacks (their last line, the exception, stays): the cause of
# a failure is one line, and the log files have the rest.
_QUIET_LINE = re.compile(
    r"^(?:DEBUG|INFO) \d{4}-\d\d-\d\d "
    r"|^\d{4}-\d\d-\d\d [\d:,.]+\s+(?:DEBUG|INFO) "
    r"|^\[\d{4}-\d\d-\d\d [\d:,.]+ [DI] "
    r"|\d+%\|"
    r"|Cannot deregister autoscaling state for deployment"  # a deployment never registered
    # The rest of Serve's INFO message listing the throughput mode's switches.
    r"|^  • |^$"
    # Tracebacks: the header, the frames and their code lines (indented), the sentences
    # that chain one exception to the next, and the controller's wrapping of a replica's.
    r"|Traceback \(most recent call last\):$|^\s+File \"|^\s{4}"
    r"|^During handling of the above exception|^The above exception was the direct cause"
    r"| -- Exception in Replica\(|^ray\.exceptions\.RayTaskError"
)
# Most lines `serve` prints of why a deploy failed, besides the first and the log line.
_MAX_CAUSES = 3
# The last line of a traceback: `ValueError: ...`, `ray.exceptions.RayTaskError(KeyError): ...`.
_EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+\.)?\w*(?:Error|Exception)\w*(?:\([\w.]+\))?: \S")


def quiet_worker_output() -> None:
    """Print Ray workers' warnings, errors and unlevelled output (prints, the exception
    lines of tracebacks) on this console, without their INFO lines, progress bars and
    traceback bodies.

    Ray has no public filter for what `log_to_driver` prints, so this replaces the handler
    `ray.init` registers on its worker-output dispatcher (the names are private:
    tests/unit/test_cli.py fails when they change).
    """
    from ray._private import worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    shown_exceptions: set[str] = set()

    def print_shown(batch: dict) -> None:
        lines = []
        for line in batch.get("lines", []):
            if _QUIET_LINE.search(line) or line in shown_exceptions:
                continue
            if _EXCEPTION_LINE.match(line):  # once: Serve retries a replica that raised
                shown_exceptions.add(line)
            lines.append(line)
        if lines:
            worker.print_to_stdstream({**batch, "lines": lines}, ignore_prefix=False)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", print_shown)


def deployment_messages(app_name: str) -> dict[str, str]:
    """Serve's message of each deployment of the app that has one (a failed deployment's
    carries its replicas' traceback)."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    deployments = app.deployments.items() if app is not None else ()
    return {name: state.message for name, state in deployments if state.message}


def deploy_failure(error: BaseException, messages: dict[str, str], logs: str) -> list[str]:
    """Why the application did not deploy, in at most five lines: Serve's summary, the
    exception each failed deployment's message ends with (not its traceback), the logs.

    Args:
        error: what `serve.run` raised.
        messages: each deployment's Serve message (`deployment_messages`).
        logs: the folder of Ray's and Serve's logs.
    """
    summary = (str(error).strip().splitlines() or [type(error).__name__])[0]
    shown = [f"embedserve: the application did not deploy: {_clip(summary)}"]
    for name, message in list(messages.items())[:_MAX_CAUSES]:
        causes = [line.strip() for line in message.splitlines() if _EXCEPTION_LINE.match(line)]
        cause = causes[-1] if causes else message.strip().splitlines()[0]
        shown.append(f"  {name}: {_clip(cause)}")
    shown.append(f"  logs: {logs} (the full tracebacks)")
    return shown


def _clip(line: str, limit: int = 300) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."


def serving_problem(
    config: EmbedServeConfig, app: ApplicationInfo, require_all: bool
) -> str | None:
    """Why `serve` stops after deploying (no model can serve; with `--require-all`, a
    backend failed), or None to keep serving."""
    failed = failed_backends(config, app)
    if require_all and failed:
        return f"embedserve: --require-all: {_names(failed)} did not load; stopping"
    serving = set(config.backends) - set(failed)
    if not any(serving & set(model.chain) for model in config.models.values()):
        return "embedserve: no model can serve (every backend failed, see above); stopping"
    return None


def failed_backends(config: EmbedServeConfig, app: ApplicationInfo) -> list[str]:
    """The backends whose replica says it cannot serve, or that no replica describes."""
    deployments = _backend_deployments(config, app)
    return [name for name, deployment in deployments.items() if not _serves(deployment)]


def _backend_deployments(
    config: EmbedServeConfig, app: ApplicationInfo
) -> dict[str, DeploymentInfo]:
    deployments = {deployment.name: deployment for deployment in app.deployments}
    return {name: deployments[name] for name in config.backends}


def _serves(deployment: DeploymentInfo) -> bool:
    return deployment.backend is not None and deployment.backend.available


def _names(backends: list[str]) -> str:
    return ("backend " if len(backends) == 1 else "backends ") + ", ".join(backends)


def ready_banner(
    config: EmbedServeConfig,
    context: Any,
    ingress: IngressPlan,
    app: ApplicationInfo,
    canaries: dict[str, ReplicaCanary],
    joined: bool,
) -> str:
    """The URLs, each backend's state (a failed one's cause and log), how to run the CLI,
    where the logs are and how to sign in to the dashboard; `context` is what `ray.init`
    returned, `app` the deployed application's status."""
    from embedserve.deployments.status import serve_client

    # Through the proxies, their own options: a cluster whose Serve was started before
    # keeps its port.
    http = serve_client().http_config
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
    deployments = _backend_deployments(config, app)
    for name, backend in config.backends.items():
        lines += _backend_lines(name, backend.kind, deployments[name], canaries)
    lines += _failed_line(config, app)
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


def _failed_line(config: EmbedServeConfig, app: ApplicationInfo) -> list[str]:
    """`failed: gone (1 of 3 backends); models through a fallback: primary`, when any."""
    failed = failed_backends(config, app)
    if not failed:
        return []
    through_fallback = [
        model for model, settings in config.models.items() if settings.chain[0] in failed
    ]
    line = f"  failed:    {', '.join(failed)} ({len(failed)} of {len(config.backends)} backends)"
    if through_fallback:
        line += f"; served by a fallback or not at all: {', '.join(through_fallback)}"
    return [line]


def _backend_lines(
    name: str, kind: str, deployment: DeploymentInfo, canaries: dict[str, ReplicaCanary]
) -> list[str]:
    """The backend's state, and for a failed load where its traceback is."""
    lines = [f"  backend {name} ({kind}): {_backend_state(deployment, canaries)}"]
    backend = deployment.backend
    if backend is not None and backend.load_attempts:
        lines.append(f"    load retried with backoff; traceback in {backend.log}")
    return lines


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
