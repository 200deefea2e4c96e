"""Deploying again (`serve deploy`, `serve.run`): a corrected config brings a backend that
failed to load back, and a config that cannot deploy at all is told in at most five
lines, from Serve's own messages, without its tracebacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from embedserve.cli.serve_console import deploy_failure, deployment_messages
from embedserve.deployments.app import APP_NAME
from tests.integration.conftest import embed, hash_backend

pytestmark = pytest.mark.integration


def config_with(fault: str) -> dict[str, Any]:
    """A model whose primary's `load` fails with `fault` (`none`: it loads)."""
    broken = {"kind": "faulty-hash", "options": {"fault": fault}, "resources": {"num_cpus": 0.1}}
    return {
        "backends": {"plugin": broken, "hash": hash_backend()},
        "models": {"m": {"chain": ["plugin", "hash"]}},
    }


def test_serve_deploy_of_a_corrected_config_recovers(
    deploy: Callable[[dict[str, Any]], str],
) -> None:
    url = deploy(config_with("import-error"))
    body = embed(url, model="m", input="the quick brown fox").json()
    assert (body["backend"], body["fallback"]) == ("hash", True)
    assert httpx.get(f"{url}/readyz", timeout=30).json()["status"] == "degraded"

    url = deploy(config_with("none"))  # the missing library installed, say
    body = embed(url, model="m", input="the quick brown fox").json()
    assert (body["backend"], body["fallback"]) == ("plugin", False)
    assert httpx.get(f"{url}/readyz", timeout=30).json()["status"] == "ready"


def test_a_config_that_cannot_deploy_is_told_in_five_lines(
    deploy: Callable[[dict[str, Any]], str],
) -> None:
    # The replica finds no plugins (autoload off in its environment): its constructor
    # raises, Serve marks the deployment DEPLOY_FAILED and the app fails.
    env = {"EMBEDSERVE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    broken = hash_backend()
    broken["resources"] = {"num_cpus": 0.1, "runtime_env": {"env_vars": env}}
    config = {"backends": {"hash": broken}, "models": {"hash": {"chain": ["hash"]}}}
    with pytest.raises(RuntimeError) as raised:
        deploy(config)

    lines = deploy_failure(raised.value, deployment_messages(APP_NAME), "/tmp/ray/logs")
    assert len(lines) <= 5, lines
    assert lines[0].startswith("embedserve: the application did not deploy: ")
    assert "hash: KeyError: \"unknown backend kind 'hash'" in lines[1]
    assert lines[-1] == "  logs: /tmp/ray/logs (the full tracebacks)"
