"""Start-up isolation in the router, without Ray: a backend whose model folder is missing
fails alone (its tokenizer loads lazily, the router starts), `/readyz` tells `ready`,
`degraded` and `not ready` apart, and `serve` decides from the deployed app's status
whether to keep serving and what its console says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from embedserve.cli.serve_console import deploy_failure, failed_backends, serving_problem
from embedserve.config import parse_config
from embedserve.deployments.status import ApplicationInfo, BackendDescription, DeploymentInfo
from tests.unit.fakes import (
    TEXTS,
    A,
    UnavailableHandle,
    assert_error,
    call,
    embed,
    make_app,
    make_config,
)


class MissingFolderHandle(UnavailableHandle):
    """The replica of a sentence-transformers backend whose model folder is missing."""

    unavailable = "FileNotFoundError: model folder /models/gone does not exist"

    def __init__(self, name: str, backend_config: dict[str, Any]) -> None:
        super().__init__(name, A)


def gone(tmp_path: Path) -> dict[str, Any]:
    return {"kind": "sentence-transformers", "options": {"model": str(tmp_path / "gone")}}


def test_a_missing_model_folder_fails_only_its_backend(tmp_path: Path) -> None:
    config = make_config(
        {"gone": gone(tmp_path), "hash": A},
        {
            "primary": {"chain": ["gone", "hash"], "allow_cross_space": True},
            "h": {"chain": ["hash"]},
        },
    )
    app, handles = make_app(config, {"gone": MissingFolderHandle})  # the router starts

    body = embed(app, model="primary", input=TEXTS).json()
    assert (body["backend"], body["fallback"]) == ("hash", True)
    [reason] = body["fallback_reasons"]
    assert reason["reason"] == (
        "BackendUnavailable: backend gone did not load: "
        "FileNotFoundError: model folder /models/gone does not exist"
    )
    # Validated and counted with the next backend's tokenizer: its replica reused them.
    assert handles["hash"].received_counts[-1] is not None
    assert embed(app, model="h", input=TEXTS).status_code == 200


def test_a_model_whose_every_tokenizer_fails_is_503_with_the_reason(tmp_path: Path) -> None:
    config = make_config({"gone": gone(tmp_path), "hash": A}, {"only-gone": {"chain": ["gone"]}})
    app, handles = make_app(config, {"gone": MissingFolderHandle})

    error = assert_error(embed(app, model="only-gone", input=TEXTS), 503)
    assert error["code"] == "all_backends_failed"
    [failed] = error["backends"]
    assert failed["backend"] == "gone"
    assert failed["reason"].startswith("the tokenizer of backend gone did not load: ")
    assert "FileNotFoundError: model folder" in failed["reason"]
    assert handles["gone"].calls == 0  # refused before any replica call
    # TEI's routes answer as TEI does when its backend fails: 424, error_type Backend.
    tokenize = call(app, "POST", "/tokenize", json={"inputs": "a text"})
    assert tokenize.status_code == 424, tokenize.text
    assert "the tokenizer of backend gone did not load" in tokenize.json()["error"]


def test_readyz_is_ready_degraded_or_not_ready() -> None:
    config = make_config(
        {"hash-gpu": A, "hash-cpu": A}, {"mini": {"chain": ["hash-gpu", "hash-cpu"]}}
    )
    app, handles = make_app(config)
    assert call(app, "GET", "/readyz").json()["status"] == "ready"

    handles["hash-gpu"].unavailable = "RuntimeError: CUDA out of memory"
    response = call(app, "GET", "/readyz")
    body = response.json()
    assert response.status_code == 200  # every model serves, through a fallback
    assert body["status"] == "degraded"
    assert body["failed_backends"] == {
        "hash-gpu": {
            "reason": "RuntimeError: CUDA out of memory",
            "log": "/tmp/ray/logs/serve/replica_embedserve_hash-gpu_0.log",
        }
    }

    handles["hash-cpu"].unavailable = "MemoryError: out of memory while loading"
    response = call(app, "GET", "/readyz")
    assert response.status_code == 503 and response.json()["status"] == "not ready"


# -- serve's verdict and console ------------------------------------------------------------


def deployment(name: str, available: bool | None, attempts: int | None = None) -> DeploymentInfo:
    backend = None
    if available is not None:
        backend = BackendDescription(
            replica="r1",
            kind="hash",
            space_id="s",
            dimensions=None,
            max_batch_tokens=16384,
            available=available,
            reason=None if available else "FileNotFoundError: model folder /m does not exist",
            log=None if available else f"/logs/replica_embedserve_{name}_r1.log",
            load_attempts=attempts,
        )
    return DeploymentInfo(
        name=name,
        status="HEALTHY",
        message="",
        replica_states={"RUNNING": 1},
        replicas=[],
        backend=backend,
    )


def app_of(*deployments: DeploymentInfo) -> ApplicationInfo:
    router = deployment("router", None)
    return ApplicationInfo(
        name="embedserve",
        status="RUNNING",
        message="",
        route_prefix="/",
        deployments=[*deployments, router],
    )


THREE = parse_config(
    {
        "backends": {"gone": A, "minilm": A, "hash": A},
        "models": {
            "primary": {"chain": ["gone", "minilm"]},
            "all-minilm-l6-v2": {"chain": ["minilm"]},
            "hash": {"chain": ["hash"]},
        },
    }
)


@pytest.mark.parametrize(
    ("serving", "require_all", "problem"),
    [
        ({"gone": True, "minilm": True, "hash": True}, True, None),
        ({"gone": False, "minilm": True, "hash": True}, False, None),
        ({"gone": False, "minilm": True, "hash": True}, True, "--require-all: backend gone"),
        ({"gone": False, "minilm": False, "hash": None}, False, "no model can serve"),
    ],
)
def test_serve_stops_only_when_no_model_can_serve_or_all_are_required(
    serving: dict[str, bool | None], require_all: bool, problem: str | None
) -> None:
    app = app_of(*(deployment(name, up, 1) for name, up in serving.items()))
    found = serving_problem(THREE, app, require_all)
    assert (found is None) if problem is None else (problem in found)


def test_failed_backends_are_those_that_cannot_serve_or_did_not_answer() -> None:
    app = app_of(deployment("gone", False, 3), deployment("minilm", True), deployment("hash", None))
    assert failed_backends(THREE, app) == ["gone", "hash"]


def test_a_deploy_failure_is_told_in_at_most_five_lines() -> None:
    # Serve's messages (the controller's, Ray 2.60): a summary, then a traceback each.
    traceback = (
        "The deployment failed to start 3 times in a row. This may be due to a problem "
        "with its constructor or initial health check failing. See controller logs for "
        "details. Error:\nray::ServeReplica:embedserve:{0}.initialize_and_get_metadata()\n"
        '  File "/ray/serve/_private/replica.py", line 1, in initialize\n'
        "RuntimeError: Traceback (most recent call last):\n"
        '  File "/embedserve/deployments/backend_deployment.py", line 70, in __init__\n'
        "KeyError: \"unknown backend kind '{0}' (registered kinds: none)\""
    )
    messages = {name: traceback.format(name) for name in ("a", "b", "c", "d")}
    error = RuntimeError("Deploying application embedserve failed: Failed to update ...")

    lines = deploy_failure(error, messages, "/tmp/ray/session/logs")
    assert lines == [
        "embedserve: the application did not deploy: Deploying application embedserve "
        "failed: Failed to update ...",
        "  a: KeyError: \"unknown backend kind 'a' (registered kinds: none)\"",
        "  b: KeyError: \"unknown backend kind 'b' (registered kinds: none)\"",
        "  c: KeyError: \"unknown backend kind 'c' (registered kinds: none)\"",
        "  logs: /tmp/ray/session/logs (the full tracebacks)",
    ]
