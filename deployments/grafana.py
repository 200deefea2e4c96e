"""embedserve's Grafana dashboard, beside the ones Ray writes for itself, Serve and Serve LLM.

Ray's dashboard process writes its Grafana dashboards into
`<session_dir>/metrics/grafana/dashboards/` on the head node, and the Grafana provisioning
it writes next to them (`ray metrics launch-prometheus`, then Grafana started with
`<session_dir>/metrics/grafana/grafana.ini`) loads every JSON file of that folder into
Grafana's "Ray" folder. `embedserve serve` adds this one there (`install_dashboard`);
`python -m embedserve.deployments.grafana` prints it for a Grafana provisioned otherwise
(KubeRay, `serve run`, `embedserve build-config --rayservice`).

The JSON follows Ray's own dashboards: every panel and query reads the `${datasource}`
variable, queries carry the `ray_io_cluster=~"$Cluster"` filter Ray's Serve dashboards
use (KubeRay's PodMonitor sets that label per cluster), panels sit in a two-column grid
of rows, and the uid is fixed so links to it stay valid. Ray's dashboard-factory classes
(`ray.dashboard.modules.metrics.dashboards.common`) are a DeveloperAPI and its renderer
is private and reads base files from Ray's own folder, so the JSON is built here; panels
are Grafana's `timeseries`, not the Angular `graph` Ray still writes (Grafana 11
migrates those on load, 12 has no Angular).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD_UID = "embedserveDashboard"
# Ray names its files `<name>_grafana_dashboard.json`.
DASHBOARD_FILE = "embedserve_grafana_dashboard.json"

logger = logging.getLogger(__name__)

# Every query's filters: the cluster (as Ray's dashboards) and the chosen models/backends.
# A `=~".*"` matcher also matches series without the label, so a Prometheus that sets no
# `ray_io_cluster` sees everything.
_CLUSTER = 'ray_io_cluster=~"$Cluster"'
_MODEL = f'model=~"$model", {_CLUSTER}'
_BACKEND = f'backend=~"$backend", {_CLUSTER}'
_MODEL_BACKEND = f'model=~"$model", backend=~"$backend", {_CLUSTER}'
_WINDOW = "[$__rate_interval]"
_QUANTILES = (0.5, 0.95, 0.99)

# Grafana's grid is 24 columns wide; two panels a row, as Ray lays its dashboards out.
_PANEL_WIDTH, _PANEL_HEIGHT, _GRID_WIDTH = 12, 8, 24


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel and the legend of its series."""

    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    """One time-series panel."""

    title: str
    description: str
    unit: str
    targets: tuple[Target, ...]
    max: float | None = None


def _rate(metric: str, filters: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{filters}}}{_WINDOW}))"


def _ratio(metric: str, part: str, whole: str, by: str) -> str:
    """The share of a counter's increase that matches `part` among all that match `whole`."""
    return f"{_rate(metric, part, by)} / {_rate(metric, whole, by)}"


def _quantiles(metric: str, filters: str, by: str, legend: str) -> tuple[Target, ...]:
    """p50, p95 and p99 of a histogram (`metric` without `_bucket`)."""
    return tuple(
        Target(
            f"histogram_quantile({q}, {_rate(f'{metric}_bucket', filters, f'{by}, le')})",
            f"p{round(q * 100)} {legend}",
        )
        for q in _QUANTILES
    )


def _mean(metric: str, filters: str, by: str, legend: str) -> Target:
    """Mean of a histogram's observations over the window (`metric` without a suffix)."""
    return Target(
        f"{_rate(f'{metric}_sum', filters, by)} / {_rate(f'{metric}_count', filters, by)}",
        f"mean {legend}",
    )


_REQUESTS = "ray_embedserve_requests_total"
_ERRORS = f'status!~"2..", {_MODEL}'
_CACHE = "ray_embedserve_cache_lookups_total"
_HITS = f'outcome="hit", {_MODEL}'

ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Requests",
        (
            Panel(
                "Requests by model and backend",
                "Embedding requests per second, by model and the backend that served them "
                "(empty: none served).",
                "reqps",
                (
                    Target(
                        _rate(_REQUESTS, _MODEL_BACKEND, "model, backend"),
                        "{{model}} ({{backend}})",
                    ),
                ),
            ),
            Panel(
                "Errors by model and status",
                "Requests answered with an error status per second; `(unknown)` counts "
                "requests for a model that is not configured.",
                "reqps",
                (Target(_rate(_REQUESTS, _ERRORS, "model, status"), "{{model}}: {{status}}"),),
            ),
            Panel(
                "Error ratio by model",
                "Share of each model's requests answered with an error status.",
                "percentunit",
                (
                    Target(
                        _ratio(_REQUESTS, _ERRORS, _MODEL, "model"),
                        "{{model}}",
                    ),
                ),
                max=1,
            ),
            Panel(
                "Fallbacks by model and reason",
                "Requests a fallback backend served per second, by how the first backend of "
                "the chain failed (error, timeout, overloaded, invalid_answer, other_space).",
                "reqps",
                (
                    Target(
                        _rate("ray_embedserve_fallbacks_total", _MODEL, "model, reason"),
                        "{{model}}: {{reason}}",
                    ),
                ),
            ),
            Panel(
                "Backend failures by backend and kind",
                "Failed backend attempts per second, whether or not a fallback then served.",
                "ops",
                (
                    Target(
                        _rate("ray_embedserve_backend_failures_total", _BACKEND, "backend, kind"),
                        "{{backend}}: {{kind}}",
                    ),
                ),
            ),
            Panel(
                "Inputs by model and backend",
                "Inputs (texts and images) embedded per second.",
                "ops",
                (
                    Target(
                        _rate("ray_embedserve_items_total", _MODEL_BACKEND, "model, backend"),
                        "{{model}} ({{backend}})",
                    ),
                ),
            ),
            Panel(
                "Tokens by model and backend",
                "Tokens embedded per second (after truncation; image-only models count none).",
                "ops",
                (
                    Target(
                        _rate("ray_embedserve_tokens_total", _MODEL_BACKEND, "model, backend"),
                        "{{model}} ({{backend}})",
                    ),
                ),
            ),
        ),
    ),
    (
        "Latency",
        (
            Panel(
                "Request latency by model",
                "Latency of served requests (status 200) in the router, from the request "
                "to the answer, fallbacks included.",
                "ms",
                _quantiles(
                    "ray_embedserve_request_latency_ms",
                    f'status="200", {_MODEL}',
                    "model",
                    "{{model}}",
                ),
            ),
            Panel(
                "Queue wait by backend",
                "Time a request's chunk waited in a replica before its batch ran.",
                "ms",
                _quantiles("ray_embedserve_queue_wait_ms", _BACKEND, "backend", "{{backend}}"),
            ),
            Panel(
                "Batch latency by backend",
                "Time to embed one batch in a replica.",
                "ms",
                _quantiles("ray_embedserve_batch_latency_ms", _BACKEND, "backend", "{{backend}}"),
            ),
        ),
    ),
    (
        "Batching",
        (
            Panel(
                "Batch size by backend",
                "Inputs per executed batch. A p99 at the backend's `batching.max_batch_size` "
                "means full batches: requests queue behind each other.",
                "short",
                (
                    _mean("ray_embedserve_batch_size", _BACKEND, "backend", "{{backend}}"),
                    *_quantiles("ray_embedserve_batch_size", _BACKEND, "backend", "{{backend}}")[
                        1:
                    ],
                ),
            ),
            Panel(
                "Batch tokens by backend",
                "Tokens per executed batch, against the backend's `batching.max_batch_tokens`.",
                "short",
                (
                    _mean("ray_embedserve_batch_tokens", _BACKEND, "backend", "{{backend}}"),
                    *_quantiles("ray_embedserve_batch_tokens", _BACKEND, "backend", "{{backend}}")[
                        1:
                    ],
                ),
            ),
            Panel(
                "Batches by backend",
                "Batches executed per second (canary probes included).",
                "ops",
                (
                    Target(
                        _rate("ray_embedserve_batch_size_count", _BACKEND, "backend"),
                        "{{backend}}",
                    ),
                ),
            ),
        ),
    ),
    (
        "Cache, canaries and truncation",
        (
            Panel(
                "Cache hit ratio by model",
                "Share of embedding-cache lookups that hit, for models with `cache.enabled`.",
                "percentunit",
                (
                    Target(
                        _ratio(_CACHE, _HITS, _MODEL, "model"),
                        "{{model}}",
                    ),
                ),
                max=1,
            ),
            Panel(
                "Canary checks by backend and outcome",
                "Canary checks of backend replicas in each interval: recorded (a first "
                "reference), passed, failed (the replica stops serving).",
                "short",
                (
                    Target(
                        "sum by (backend, outcome) (increase(ray_embedserve_canary_checks_total"
                        f"{{{_BACKEND}}}{_WINDOW}))",
                        "{{backend}}: {{outcome}}",
                    ),
                ),
            ),
            Panel(
                "Truncated inputs by model and backend",
                "Inputs cut to their model's token limit per second (truncation on).",
                "ops",
                (
                    Target(
                        _rate(
                            "ray_embedserve_truncated_inputs_total",
                            _MODEL_BACKEND,
                            "model, backend",
                        ),
                        "{{model}} ({{backend}})",
                    ),
                ),
            ),
            Panel(
                "Tokens dropped by truncation",
                "Tokens that truncation cut off per second.",
                "ops",
                (
                    Target(
                        _rate(
                            "ray_embedserve_truncated_tokens_total",
                            _MODEL_BACKEND,
                            "model, backend",
                        ),
                        "{{model}} ({{backend}})",
                    ),
                ),
            ),
        ),
    ),
)


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-value query variable whose "All" is `.*` (as Ray's)."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": "${datasource}",
        "definition": query,
        "query": {"query": query, "refId": "StandardVariableQuery"},
        "refresh": 2,  # on time-range change: new models and backends appear
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "sort": 1,
    }


_TEMPLATING = [
    # Ray's datasource variable: hidden, the default Prometheus datasource; the Ray
    # dashboard passes `var-datasource` when it embeds a panel.
    {
        "name": "datasource",
        "type": "datasource",
        "query": "prometheus",
        "description": "Filter queries of a specific Prometheus type.",
        "hide": 2,
        "includeAll": False,
        "multi": False,
        "current": {"selected": False},
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    },
    {
        **_variable(
            "Cluster", "Cluster", "label_values(ray_node_network_receive_speed, ray_io_cluster)"
        ),
        "multi": False,
        "current": {"selected": False},
        "description": "Ray's cluster filter (the ray_io_cluster label KubeRay sets).",
    },
    _variable(
        "model", "Model", f"label_values(ray_embedserve_requests_total{{{_CLUSTER}}}, model)"
    ),
    _variable(
        "backend",
        "Backend",
        f"label_values(ray_embedserve_batch_size_count{{{_CLUSTER}}}, backend)",
    ),
]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "min": 0,
        "custom": {"drawStyle": "line", "fillOpacity": 10, "lineWidth": 1, "showPoints": "never"},
    }
    if panel.max is not None:
        defaults["max"] = panel.max
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": "${datasource}",
        "gridPos": {"h": _PANEL_HEIGHT, "w": _PANEL_WIDTH, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["mean", "lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            {
                "datasource": "${datasource}",
                "expr": target.expr,
                "legendFormat": target.legend,
                "refId": chr(ord("A") + index),
            }
            for index, target in enumerate(panel.targets)
        ],
    }


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (a dict)."""
    panels: list[dict[str, Any]] = []
    y = 0
    # Ids are stable per position: rows 1, 2, ...; a row's panels <row>01, <row>02, ...
    for row_number, (title, row_panels) in enumerate(ROWS, start=1):
        panels.append(
            {
                "id": row_number,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": _GRID_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        for index, panel in enumerate(row_panels):
            x = _PANEL_WIDTH * (index % 2)
            panel_y = y + _PANEL_HEIGHT * (index // 2)
            panels.append(_panel_json(panel, row_number * 100 + index + 1, x, panel_y))
        y += _PANEL_HEIGHT * ((len(row_panels) + 1) // 2)
    return {
        "uid": DASHBOARD_UID,
        "title": "embedserve",
        "description": "embedserve's metrics (ray_embedserve_*): requests, errors, "
        "fallbacks, latency, batching, cache, canaries and truncation.",
        "tags": ["embedserve", "ray-serve"],
        "editable": True,
        "graphTooltip": 1,
        "links": [],
        "refresh": False,
        "schemaVersion": 39,
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": "-- Grafana --",
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": _TEMPLATING},
        "panels": panels,
    }


def dashboard_json() -> str:
    """The dashboard as the JSON text Grafana imports or provisions."""
    return json.dumps(dashboard(), indent=2) + "\n"


def ray_dashboards_folder(session_dir: str | os.PathLike[str]) -> Path:
    """The folder Ray's dashboard writes its Grafana dashboards into, for a session.

    Ray's metrics module reads the same environment variables (in the dashboard's process:
    for a Ray that `embedserve serve` starts, this process's environment).
    """
    folder = os.environ.get("RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR")
    if folder:
        return Path(folder)
    root = os.environ.get("RAY_METRICS_OUTPUT_ROOT") or Path(session_dir, "metrics")
    return Path(root, "grafana", "dashboards")


def install_dashboard(session_dir: str | os.PathLike[str]) -> Path | None:
    """Write the dashboard beside Ray's own for the session whose folder is `session_dir`
    (`ray.init(...).address_info["session_dir"]`); return the file written.

    Ray writes its dashboards on the head node only. Where its folder is not on this
    machine (a driver on another node, a Ray without its dashboard), nothing is written
    and a warning says how to install the dashboard by hand.
    """
    folder = ray_dashboards_folder(session_dir)
    if not folder.is_dir():
        logger.warning(
            "embedserve's Grafana dashboard was not installed: Ray's dashboards folder %s "
            "is not on this machine (not the head node, or Ray runs without its "
            "dashboard); on the head node, run `python -m embedserve.deployments.grafana "
            "> <that folder>/%s`",
            folder,
            DASHBOARD_FILE,
        )
        return None
    path = folder / DASHBOARD_FILE
    # Grafana's provisioner rereads the folder every few seconds: it must never see half a
    # file, so the JSON appears by a rename (its provisioner reads only `*.json`).
    partial = path.with_suffix(".json.partial")
    partial.write_text(dashboard_json())
    partial.replace(path)
    return path


if __name__ == "__main__":
    sys.stdout.write(dashboard_json())
