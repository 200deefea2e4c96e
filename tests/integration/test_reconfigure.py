"""Batch limits change on live replicas through a declarative Serve config.

This is how `serve deploy` and KubeRay update an application: the same import path and
arguments with a new `user_config` for a deployment call `reconfigure` on its running
replicas instead of replacing them.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.conftest import backend_handle, hash_backend
from tests.texts import paragraphs

pytestmark = pytest.mark.integration

CONFIG = {
    # No canary: its probe batches would mix into the batch records under test.
    "backends": {
        "hash": {**hash_backend(), "max_ongoing_requests": 64, "canary": {"enabled": False}}
    },
    "models": {"hash": {"chain": ["hash"]}},
}


def deploy_declaratively(config_path: Path, max_batch_size: int) -> None:
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    user_config = {"max_batch_size": max_batch_size, "batch_wait_timeout_s": 0.05}
    schema = ServeDeploySchema.model_validate(
        {
            "applications": [
                {
                    "name": "embedserve",
                    "route_prefix": "/",
                    "import_path": "embedserve.deployments.app:app_builder",
                    "args": {"config": str(config_path)},
                    "deployments": [{"name": "hash", "user_config": user_config}],
                }
            ]
        }
    )
    serve_start().deploy_apps(schema, _blocking=True)


def replica_and_batches() -> tuple[str, list[dict]]:
    handle = backend_handle("hash")
    return handle.describe.remote().result().replica, handle.batch_records.remote().result()


def test_batch_limits_change_without_replacing_replicas(serve_url: str, tmp_path: Path) -> None:
    from ray import serve

    config_path = tmp_path / "embedserve.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    five = {"model": "hash", "input": paragraphs(5)}
    try:
        deploy_declaratively(config_path, max_batch_size=2)
        assert httpx.post(f"{serve_url}/v1/embeddings", json=five).status_code == 200
        replica, batches = replica_and_batches()
        assert max(b["items"] for b in batches) <= 2

        deploy_declaratively(config_path, max_batch_size=8)
        # The router asks the replicas for their limits again (it would within
        # DESCRIPTION_MAX_AGE_S by itself), and splits by 8 from now on.
        assert httpx.get(f"{serve_url}/v1/models").status_code == 200
        assert httpx.post(f"{serve_url}/v1/embeddings", json=five).status_code == 200
        same_replica, after = replica_and_batches()
        assert same_replica == replica  # reconfigured in place, not restarted
        assert after[len(batches) :][-1]["items"] == 5
    finally:
        serve.delete("embedserve")
